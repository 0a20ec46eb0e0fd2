// Eigen/Core for our translation units. GCC 12 with AVX-512 reports -W(maybe-)uninitialized
// inside Eigen's GEMM packing (_mm512_unpacklo_ps on the deliberately undefined register of
// _mm512_undefined_ps), a false positive reported at the point of instantiation, so it is silenced
// for the whole file: include this first, before any header that pulls in the intrinsics.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>
