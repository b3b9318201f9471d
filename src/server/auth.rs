//! Bearer-token auth, one check for both APIs: HTTP's `Authorization` header and gRPC's
//! `authorization` metadata carry the same `Bearer <token>`.

use super::error::ApiError;

/// Passes when no key is set, or when `authorization` is `Bearer <key>`.
pub fn check(key: Option<&str>, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let given = authorization.and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g, key)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Equal lengths and bytes, compared without an early exit.
fn same_secret(given: &str, key: &str) -> bool {
    given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(check(None, None).is_ok());
        assert!(check(Some("k3y"), Some("Bearer k3y")).is_ok());
        for wrong in [None, Some("k3y"), Some("Bearer k3"), Some("Bearer k3y "), Some("bearer k3y"), Some("Basic k3y")]
        {
            assert!(matches!(check(Some("k3y"), wrong), Err(ApiError::Unauthorized)), "{wrong:?}");
        }
    }
}
