// Which SIMD level the CPU kernels run at, chosen once at run time (never -march=native).
//   kScalar     plain C++ (any x86-64, and the fallback everywhere)
//   kAvx2       AVX2 + FMA + F16C
//   kAvx512     AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Zen 4 and later)
#pragma once

namespace kvshare::cpu {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best level this CPU supports.
Isa DetectIsa();
const char* IsaName(Isa isa);

}  // namespace kvshare::cpu

// Function attributes for the per-ISA kernels.
#define KVSHARE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVSHARE_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
