#!/usr/bin/env bash
# Fuzz conjure's spec parser and image decoders with cargo-fuzz (libFuzzer), for a bounded time.
#
#   bash tools/fuzz.sh                  # CI form: build both targets, run each for 45 s
#   bash tools/fuzz.sh spec 3600        # one target (spec | decode) for an hour
#   CONJURE_FUZZ_SECONDS=300 bash tools/fuzz.sh
#
# The targets and their checks are fuzz/fuzz_targets/*.rs and fuzz/harness.rs; see README, "Reliability".
# A crash stops the script with a non-zero status and leaves the input in fuzz/artifacts/<target>/; fix
# the bug, then copy the input to fuzz/regressions/<target>/ so that tests/fuzz_regressions.rs replays it
# under plain `cargo test`.
#
# Toolchain: works on stable Rust. `-s none` builds without AddressSanitizer, the one part of cargo-fuzz
# that needs nightly (`-Zsanitizer`); libFuzzer's coverage instrumentation uses stable `-C` flags only,
# and conjure and its decoders are safe Rust, so the sanitizer would add little. Memory blow-ups are
# caught by libFuzzer's -rss_limit_mb / -malloc_limit_mb instead. The build keeps cargo-fuzz's default
# of debug assertions and overflow checks on.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(spec decode)
if [ $# -ge 1 ]; then
  case "$1" in
    spec | decode) targets=("$1") ;;
    *) echo "usage: $0 [spec|decode] [SECONDS]" >&2; exit 2 ;;
  esac
fi
seconds="${2:-${CONJURE_FUZZ_SECONDS:-45}}"

# Instrumented builds differ from the normal ones: keep them in a target dir of their own (outside the
# clone, so consecutive runs reuse it), whatever CARGO_TARGET_DIR the caller uses for the main build.
export CARGO_TARGET_DIR="${CONJURE_FUZZ_TARGET_DIR:-$HOME/.cache/conjure-fuzz-target}"
# The corpus a run grows also lives outside the clone; only the seeds in fuzz/corpus/ are committed.
corpus_root="${CONJURE_FUZZ_CORPUS:-$HOME/.cache/conjure-fuzz-corpus}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

cd fuzz
cargo fuzz build -s none
for t in "${targets[@]}"; do
  mkdir -p "$corpus_root/$t" "artifacts/$t"
  # Inputs: the growing corpus (written to), the committed seeds and past crashes (read only).
  dirs=("$corpus_root/$t" "corpus/$t")
  if [ -d "regressions/$t" ]; then dirs+=("regressions/$t"); fi
  # Specs are short; images need room for a few chunks / strips / scans.
  extra=(-max_len=4096)
  if [ "$t" = decode ]; then extra=(-max_len=16384); fi
  if [ -f "$t.dict" ]; then extra+=("-dict=$t.dict"); fi
  echo "fuzz: $t for ${seconds} s"
  if ! cargo fuzz run -s none "$t" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 "${extra[@]}"; then
    echo "fuzz: target $t failed; the input is in fuzz/artifacts/$t/ (replay it with" >&2
    echo "  cd fuzz && cargo fuzz run -s none $t artifacts/$t/<file>); after the fix, copy it to" >&2
    echo "  fuzz/regressions/$t/ for tests/fuzz_regressions.rs" >&2
    exit 1
  fi
done
