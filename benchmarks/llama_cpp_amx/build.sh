#!/usr/bin/env bash
# llama.cpp's CPU backend with its AMX int8 kernels, for benchmarks/encode.py on an AMX CPU:
# `make setup` builds llama-cpp-python without AMX, since its AMX kernels raise SIGILL here. Two
# causes, both patched by amx_tile_config.patch (see its comments): GCC drops the stores to the
# tile config built on the stack, and the config is loaded once per thread while oneDNN (torch)
# loads its own in the same thread. This rebuilds only libggml-cpu from the installed version's
# sdist (about 1 minute on 2 cores) into a copy of the llama_cpp package:
#   benchmarks/llama_cpp_amx/build.sh [out dir, default /tmp/llama_cpp_amx]
#   PYTHONPATH=/tmp/llama_cpp_amx python benchmarks/encode.py --llama-cpp q8_0
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/llama_cpp_amx}
PY=${PY:-$HERE/../../.venv/bin/python}
PACKAGE=$("$PY" -c "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))")
VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SOURCE=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
patch -d "$SOURCE" -p1 < "$HERE/amx_tile_config.patch"
cmake -S "$SOURCE" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF > "$WORK/cmake.log"
if ! cmake --build "$WORK/build" --target ggml-cpu > "$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  exit 1
fi
if [ "$(objdump -d "$WORK/build/bin/libggml-cpu.so" | grep -c tdpbssd)" = 0 ]; then
  echo "no AMX int8 instruction in the build: this CPU or compiler lacks AMX" >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
cp -r "$PACKAGE" "$OUT/llama_cpp"
for name in "$OUT"/llama_cpp/lib/libggml-cpu.so*; do
  cp -L "$WORK/build/bin/libggml-cpu.so" "$name"
done
echo "llama-cpp-python $VERSION with AMX: PYTHONPATH=$OUT"
