//! What the generator decides by timing itself on the device: whether each upsampling block
//! folds its filter into its weights or filters inside its epilogue kernel, per resolution,
//! batch size, type and layout. Owns the choices made so far; it runs no layer itself (the
//! generator hands it a block to run either way) and is never asked on the CPU.

use std::sync::Mutex;
use std::time::Instant;

use tch::{Device, Kind, TchError};

type Result<T> = std::result::Result<T, TchError>;

/// What an upsampling block's measured choice holds for: its resolution, the batch size, and
/// the type and layout it computes in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoldKey {
    pub res: i64,
    pub batch: i64,
    pub kind: Kind,
    pub channels_last: bool,
}

/// One measured choice: fold or not, and the best of three milliseconds each way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoldChoice {
    pub key: FoldKey,
    pub folded: bool,
    pub folded_ms: f64,
    pub unfolded_ms: f64,
}

/// The choices made so far, in the order they were made (keys are few: a list does).
#[derive(Default)]
pub struct FoldChoices(Mutex<Vec<FoldChoice>>);

impl FoldChoices {
    pub fn all(&self) -> Vec<FoldChoice> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `key`'s block folds, once measured.
    pub fn get(&self, key: FoldKey) -> Option<bool> {
        let choices = self.0.lock().unwrap_or_else(|e| e.into_inner());
        choices.iter().find(|c| c.key == key).map(|c| c.folded)
    }

    /// Runs a block both ways (`run(fold)`), once untimed (cuDNN's autotuner picks its
    /// algorithms at a shape's first call) and then three times each, waiting for `device`
    /// around each run; keeps the faster way (folded on a tie) for `key` and returns its output
    /// (the block's features and the picture so far).
    pub fn measure<Out>(&self, key: FoldKey, device: Device, run: &dyn Fn(bool) -> Result<Out>) -> Result<Out> {
        let sync = || super::device::synchronize(device);
        let mut best = [f64::INFINITY; 2];
        for fold in [true, false] {
            let _warm = run(fold)?;
        }
        for _ in 0..3 {
            for (i, fold) in [true, false].into_iter().enumerate() {
                sync();
                let t0 = Instant::now();
                let _out = run(fold)?;
                sync();
                best[i] = best[i].min(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let choice = FoldChoice { key, folded: best[0] <= best[1], folded_ms: best[0], unfolded_ms: best[1] };
        tracing::debug!(?choice, "an upsampling block's filter, by measurement");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(choice);
        run(choice.folded)
    }
}

#[cfg(test)]
mod tests {
    use tch::Tensor;

    use super::*;

    /// On the CPU (no device to wait for) the choice follows the timings: the way that sleeps
    /// loses, and the choice is kept for its key only.
    #[test]
    fn the_faster_way_is_kept_per_key() {
        let choices = FoldChoices::default();
        let key = FoldKey { res: 16, batch: 4, kind: Kind::Half, channels_last: true };
        let out = |fold: bool| -> Result<(Tensor, Option<Tensor>)> {
            if fold {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok((Tensor::from(i64::from(fold)), None))
        };
        let (x, _) = choices.measure(key, Device::Cpu, &out).unwrap();
        assert_eq!(x.int64_value(&[]), 0, "the output of the way chosen");
        assert_eq!(choices.get(key), Some(false));
        let c = choices.all()[0];
        assert!(c.folded_ms >= 20.0 && c.unfolded_ms < c.folded_ms, "{c:?}");
        assert_eq!(choices.get(FoldKey { batch: 8, ..key }), None, "another batch size is measured anew");
    }
}
