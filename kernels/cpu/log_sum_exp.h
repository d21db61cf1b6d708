// log(sum_i exp(x[i])) of one row of logits, the normaliser of a log-softmax: what every NLL
// the engine and the searches report divides by (held-out perplexity scores one per target over
// the whole vocabulary, 49,152 terms on SmolLM2). The SIMD levels take exp in fp32 (Exp512 /
// Exp256, within ~2 ulp of expf) after subtracting the maximum and sum in double; the scalar
// level takes exp in double. All agree with a double reference to ~1e-7 (relative to 1).
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.h"

namespace kvshare::cpu {

// n >= 1. Infinite or NaN inputs give what the arithmetic gives (callers hold finite logits).
double LogSumExp(Isa isa, const float* x, int64_t n);

}  // namespace kvshare::cpu
