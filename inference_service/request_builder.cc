#include "inference_service/request_builder.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/util/excerpt.h"

namespace kvshare {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<std::vector<int32_t>> Prompt(const v1::GenerateRequest& wire,
                                            const Tokenizer& tokenizer, const ModelConfig& config) {
  if (wire.has_add_bos() && wire.prompt_case() != v1::GenerateRequest::kText) {
    return Invalid("add_bos: only applies to a text prompt");
  }
  switch (wire.prompt_case()) {
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("prompt: none given (set text, token_ids or chat)");
    case v1::GenerateRequest::kText: {
      if (wire.text().empty()) return Invalid("text: empty prompt");
      if (wire.text().size() > kMaxPromptBytes) {
        return Invalid(absl::StrFormat("text: %d bytes, at most %d (the limit)", wire.text().size(),
                                       kMaxPromptBytes));
      }
      const bool bos = wire.has_add_bos() ? wire.add_bos() : tokenizer.add_bos_by_default();
      return tokenizer.Encode(wire.text(), bos);
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = wire.token_ids().ids();
      if (ids.empty()) return Invalid("token_ids.ids: empty prompt");
      if (ids.size() > config.max_seq_len) {
        return Invalid(absl::StrFormat("token_ids.ids: %d tokens, at most %d (the context of %s)",
                                       ids.size(), config.max_seq_len, config.name));
      }
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= config.vocab_size) {
          return Invalid(absl::StrFormat("token_ids.ids[%d] = %d out of range [0, %d)", i, ids[i],
                                         config.vocab_size));
        }
      }
      return std::vector<int32_t>(ids.begin(), ids.end());
    }
    case v1::GenerateRequest::kChat: {
      const auto& wire_messages = wire.chat().messages();
      if (wire_messages.empty()) return Invalid("chat.messages: empty conversation");
      if (wire_messages.size() > kMaxChatMessages) {
        return Invalid(absl::StrFormat("chat.messages: %d messages, at most %d (the limit)",
                                       wire_messages.size(), kMaxChatMessages));
      }
      std::vector<ChatMessage> messages;
      size_t bytes = 0;
      for (int i = 0; i < wire_messages.size(); ++i) {
        const std::string& role = wire_messages[i].role();
        if (role != "system" && role != "user" && role != "assistant") {
          return Invalid(absl::StrFormat(
              "chat.messages[%d].role \"%s\" must be \"system\", \"user\" or \"assistant\"", i,
              Excerpt(role)));
        }
        bytes += wire_messages[i].content().size();
        if (bytes > kMaxPromptBytes) {
          return Invalid(absl::StrFormat(
              "chat.messages: the contents up to [%d] are %d bytes, at most %d (the limit)", i,
              bytes, kMaxPromptBytes));
        }
        messages.push_back({role, wire_messages[i].content()});
      }
      auto text = tokenizer.ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
      if (!text.ok()) {
        return Invalid(absl::StrFormat("chat: model %s has no usable chat template (%s)",
                                       config.name, text.status().message()));
      }
      return tokenizer.Encode(*text, /*add_bos=*/false);
    }
  }
  return Invalid("prompt: unknown form");
}

}  // namespace

int MaxTokensLimit(const RequestLimits& limits, int max_seq_len) {
  return limits.max_tokens_limit > 0 ? std::min(limits.max_tokens_limit, max_seq_len) : max_seq_len;
}

absl::StatusOr<GenerationRequest> BuildGenerationRequest(
    const v1::GenerateRequest& wire, std::string request_id, const Tokenizer& tokenizer,
    const ModelConfig& config, const StrategyHolder& strategies, const RequestLimits& limits) {
  GenerationRequest r;
  r.id = std::move(request_id);

  const int max_tokens_limit = MaxTokensLimit(limits, config.max_seq_len);
  r.max_tokens = wire.has_max_tokens() ? wire.max_tokens()
                                       : std::min(limits.default_max_tokens, max_tokens_limit);
  if (r.max_tokens < 1 || r.max_tokens > max_tokens_limit) {
    return Invalid(
        absl::StrFormat("max_tokens %d must be in [1, %d]", r.max_tokens, max_tokens_limit));
  }
  r.sampling.temperature = wire.temperature();
  r.sampling.top_k = wire.top_k();
  r.sampling.top_p = wire.has_top_p() ? wire.top_p() : 1.0f;
  r.sampling.seed = wire.seed();
  absl::Status s = ValidateSamplingParams(r.sampling, config.vocab_size);
  if (!s.ok()) return s;
  if (wire.logprobs() < 0 || wire.logprobs() > limits.max_logprobs) {
    return Invalid(
        absl::StrFormat("logprobs %d must be in [0, %d]", wire.logprobs(), limits.max_logprobs));
  }
  r.logprobs = wire.logprobs();
  r.ignore_eos = wire.ignore_eos();
  if (wire.stop_size() > limits.max_stop_strings) {
    return Invalid(
        absl::StrFormat("stop: %d strings, at most %d", wire.stop_size(), limits.max_stop_strings));
  }
  for (int i = 0; i < wire.stop_size(); ++i) {
    if (static_cast<int>(wire.stop(i).size()) > limits.max_stop_bytes) {
      return Invalid(absl::StrFormat("stop[%d]: %d bytes, at most %d", i, wire.stop(i).size(),
                                     limits.max_stop_bytes));
    }
    r.stop.push_back(wire.stop(i));
  }
  auto strategy = strategies.Resolve(wire.has_strategy_version()
                                         ? std::optional<uint64_t>(wire.strategy_version())
                                         : std::nullopt);
  if (!strategy.ok()) return strategy.status();
  r.strategy = *strategy;

  auto prompt = Prompt(wire, tokenizer, config);
  if (!prompt.ok()) return prompt.status();
  if (prompt->empty()) return Invalid("prompt: tokenises to no tokens");
  r.prompt = std::move(*prompt);
  return r;
}

}  // namespace kvshare
