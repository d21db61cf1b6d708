// Text <-> token ids. Three implementations behind one interface:
//   - the llama2.c SentencePiece-style tokenizer (tok512.bin: score-ordered merges, a dummy
//     prefix space, byte fallback <0xXX>);
//   - the byte-level BPE stored in GGUF (tokenizer.ggml.model == "gpt2"): GPT-2 style
//     pre-tokenisation (as the file's tokenizer.ggml.pre names, e.g. "smollm"), ranked merges,
//     special tokens matched verbatim in the text, and the chat template (ChatML for SmolLM2);
//   - the SentencePiece model stored in GGUF (tokenizer.ggml.model == "llama"; spm_tokenizer.h).
// Tokenizers are immutable after construction and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvshare {

class GgufFile;
class Model;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; BOS first when add_bos (and the tokenizer has one). Special tokens
  // written in the text (e.g. "<|im_start|>") become their ids.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // The bytes token `id` stands for, given the previous token (llama2.c strips the leading
  // space after BOS). Raw bytes: a UTF-8 character may span tokens. Control tokens (BOS, EOS,
  // <|im_start|>, ...) and ids out of range give "": they mark structure, not text. To show
  // them (debugging, a raw transcript) use TokenText.
  virtual std::string DecodeToken(int32_t prev_id, int32_t id) const = 0;
  // Concatenated bytes of ids (BOS/EOS and other control tokens produce nothing).
  std::string Decode(absl::Span<const int32_t> ids) const;
  // True for ids that mark structure rather than text (DecodeToken gives "").
  virtual bool IsControlToken(int32_t id) const { return id == bos_id() || id == eos_id(); }
  // The vocabulary entry as stored, e.g. "<|im_end|>", "\n<s>\n", "Ġthe" (byte-level BPE text is
  // not decoded); "" out of range.
  virtual std::string TokenText(int32_t id) const { return DecodeToken(-1, id); }

  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;
  // Whether the model expects BOS at the start of a plain-text prompt.
  virtual bool add_bos_by_default() const = 0;
  // True for ids that end generation (EOS, and e.g. <|im_end|> for chat models).
  virtual bool IsEndOfGeneration(int32_t id) const = 0;
  // The model's chat template applied to messages (with the assistant prompt appended when
  // add_generation_prompt). Unimplemented when the model has no template.
  virtual absl::StatusOr<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                                        bool add_generation_prompt) const = 0;
};

// llama2.c tokenizer file (e.g. tok512.bin) for a model with `vocab_size` tokens.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int vocab_size);
// The tokenizer stored in a GGUF file's metadata.
absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGguf(const GgufFile& gguf);
// The tokenizer for a model: from its GGUF metadata, or from `tokenizer_path` (required for
// llama2.c checkpoints; when empty, tok<vocab>.bin beside the model is tried).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerForModel(const Model& model,
                                                                 const std::string& tokenizer_path);

}  // namespace kvshare
