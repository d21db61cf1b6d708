// Wire GenerateRequest -> GenerationRequest: every field validated, the prompt tokenised, the
// strategy resolved. Errors a caller can cause come back as INVALID_ARGUMENT naming the field,
// the value and the limit (an unknown strategy_version as StrategyHolder decides).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/tokenizer/tokenizer.h"
#include "inference_service/generation.h"
#include "inference_service/strategy_holder.h"
#include "kvshare/v1/inference.pb.h"

namespace kvshare {

struct RequestLimits {
  int default_max_tokens = 256;  // when the request leaves max_tokens unset
  int max_tokens_limit = 0;      // largest max_tokens; 0 = the model's context
  int max_logprobs = 20;
  int max_stop_strings = 16;
  int max_stop_bytes = 256;  // per stop string
};

// The largest max_tokens `limits` allow for a model with context `max_seq_len`.
int MaxTokensLimit(const RequestLimits& limits, int max_seq_len);

absl::StatusOr<GenerationRequest> BuildGenerationRequest(
    const v1::GenerateRequest& wire, std::string request_id, const Tokenizer& tokenizer,
    const ModelConfig& config, const StrategyHolder& strategies, const RequestLimits& limits);

}  // namespace kvshare
