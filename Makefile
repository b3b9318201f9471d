# The two commands of the quick start. Each installs what it needs on first use:
# libtorch (PyPI torch==2.11.0) into $MIXGAN_CACHE (default ~/.cache/mixgan), outside the clone.
WITH_TORCH := scripts/with-torch
OUT ?= out

.PHONY: run test container-test lint build bench setup clean samples

setup:
	@scripts/setup-torch >/dev/null

build: setup
	$(WITH_TORCH) cargo build --release

# The service on the bundled models (Ctrl-C stops it). See the README for a curl.
run: build
	target/release/mixgan serve --models models --addr $${MIXGAN_ADDR:-127.0.0.1:8080}

# Sample pictures of each bundled model and the example layouts, offline.
samples: build
	@for m in models/*/; do \
	  grep -q '^kind = "detector"' $$m/model.toml && continue; \
	  name=$$(basename $$m); \
	  target/release/mixgan generate --model $$m --seeds 0-7 --outdir $(OUT)/$$name || exit 1; \
	done
	@for l in examples/*.json; do \
	  name=$$(basename $$l .json); \
	  target/release/mixgan render $$l --outdir $(OUT) --masks $(OUT)/$$name-masks.png --timings --leak || exit 1; \
	done
	@echo "pictures: $(OUT)/<model>/seedNNNN.png, composed layouts: $(OUT)/<example>.png|jpg"

# The house style first (formatter, then clippy with warnings as errors), then every test.
test: setup lint
	MIXGAN_TOOLS=$$(scripts/setup-test-tools) $(WITH_TORCH) cargo test --release

# The container test on its own, installing Podman and its companions first (needs root or
# sudo and Debian's apt); `make test` runs it too wherever Podman is installed.
container-test: setup
	scripts/setup-container-tools --install > /dev/null
	MIXGAN_REQUIRE_CONTAINER=1 $(WITH_TORCH) cargo test --release --test container -- --nocapture

lint: setup
	cargo fmt --check
	$(WITH_TORCH) cargo clippy --release --all-targets --locked -- -D warnings

bench: build
	$(WITH_TORCH) target/release/mixgan bench --models models --batches 1,8 --iters 20

clean:
	cargo clean
	rm -rf $(OUT)
