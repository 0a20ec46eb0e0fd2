#!/usr/bin/env bash
# Builds the CUDA targets (no GPU needed) and stages a self-contained folder to copy to a GPU
# machine: bin/ (chunkwise, chunkwise_cuda_tests, bench_*) and lib/ (the shared libraries they
# need that a CUDA machine may lack, e.g. libfmt). Usage: bench/gpu/build.sh [STAGE_DIR] (default .gpu)
#   CUDA_ARCH=90a (H100/H200) by default; CPU code is built for x86-64-v3 so it runs on any AVX2 host.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=${1:-.gpu}
arch=${CUDA_ARCH:-90a}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "${BUILD_DIR:-build-gpu}" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCHUNKWISE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCHUNKWISE_CPU_ARCH=x86-64-v3 -DCHUNKWISE_BUILD_EXAMPLES=OFF >/dev/null
targets=(chunkwise_cli chunkwise_cuda_tests)
for src in bench/gpu/bench_*.cpp; do [[ -e $src ]] && targets+=("$(basename "$src" .cpp)"); done
cmake --build "${BUILD_DIR:-build-gpu}" -j"$(nproc)" --target "${targets[@]}"
rm -rf "$stage/bin" "$stage/lib"
mkdir -p "$stage/bin" "$stage/lib"
cp "${BUILD_DIR:-build-gpu}"/bin/chunkwise "${BUILD_DIR:-build-gpu}"/bin/chunkwise_cuda_tests "$stage/bin/"
for t in "${targets[@]:2}"; do cp "${BUILD_DIR:-build-gpu}/bin/$t" "$stage/bin/"; done
strip --strip-debug "$stage"/bin/*
# Libraries outside glibc, libstdc++, libgcc, libgomp and the CUDA runtime travel along.
for lib in $(ldd "$stage"/bin/* | awk '/=> \//{print $3}' | sort -u); do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libstdc++*|libgcc_s*|libgomp*|libcuda*|libcublas*|libcudart*|ld-linux*|libdl*|libpthread*|librt*) ;;
    *) cp -L "$lib" "$stage/lib/" ;;
  esac
done
du -sh "$stage"/bin "$stage"/lib
