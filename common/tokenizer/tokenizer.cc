#include "common/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/gguf.h"
#include "common/model/llama2c.h"
#include "common/model/model.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/spm_tokenizer.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace kvshare {
namespace {

// Sets *out when the key is present; a missing key is not an error, a mistyped one is.
template <typename T>
absl::Status ReadOptional(absl::StatusOr<T> value, T* out) {
  if (value.ok()) {
    *out = *std::move(value);
    return absl::OkStatus();
  }
  return absl::IsNotFound(value.status()) ? absl::OkStatus() : value.status();
}

absl::Status ReadOptionalId(const GgufFile& gguf, const std::string& key, int32_t* out) {
  int64_t id = -1;
  if (absl::Status s = ReadOptional(gguf.GetInt(key), &id); !s.ok()) return s;
  if (id < -1 || id > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(key, " = ", id, " is not a token id"));
  }
  *out = static_cast<int32_t>(id);
  return absl::OkStatus();
}

absl::Status ReadTokenTypes(const GgufFile& gguf, std::vector<int32_t>* out) {
  std::vector<int64_t> types;
  if (absl::Status s = ReadOptional(gguf.GetIntArray("tokenizer.ggml.token_type"), &types);
      !s.ok()) {
    return s;
  }
  out->reserve(types.size());
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] < INT32_MIN || types[i] > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.ggml.token_type[", i, "] = ", types[i], " is out of range"));
    }
    out->push_back(static_cast<int32_t>(types[i]));
  }
  return absl::OkStatus();
}

// tokenizer.ggml.model == "llama". Defaults as llama.cpp's: BOS added, a space prefix.
absl::StatusOr<SpmVocab> ReadSpmVocab(const GgufFile& gguf) {
  SpmVocab vocab;
  absl::StatusOr<std::vector<std::string>> tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  vocab.tokens = *std::move(tokens);
  absl::StatusOr<std::vector<double>> scores = gguf.GetFloatArray("tokenizer.ggml.scores");
  if (!scores.ok()) return scores.status();
  vocab.scores.assign(scores->begin(), scores->end());
  if (absl::Status s = ReadTokenTypes(gguf, &vocab.token_types); !s.ok()) return s;
  for (auto [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", &vocab.bos_id},
                         std::pair{"tokenizer.ggml.eos_token_id", &vocab.eos_id},
                         std::pair{"tokenizer.ggml.unknown_token_id", &vocab.unk_id}}) {
    if (absl::Status s = ReadOptionalId(gguf, key, id); !s.ok()) return s;
  }
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    int32_t id = -1;
    if (absl::Status s = ReadOptionalId(gguf, key, &id); !s.ok()) return s;
    if (id >= 0) vocab.extra_end_of_generation_ids.push_back(id);
  }
  for (auto [key, flag] : {std::pair{"tokenizer.ggml.add_bos_token", &vocab.add_bos},
                           std::pair{"tokenizer.ggml.add_space_prefix", &vocab.add_space_prefix}}) {
    if (absl::Status s = ReadOptional(gguf.GetBool(key), flag); !s.ok()) return s;
  }
  if (absl::Status s =
          ReadOptional(gguf.GetString("tokenizer.chat_template"), &vocab.chat_template);
      !s.ok()) {
    return s;
  }
  return vocab;
}

absl::StatusOr<BpeVocab> ReadBpeVocab(const GgufFile& gguf) {
  BpeVocab vocab;
  absl::StatusOr<std::vector<std::string>> tokens = gguf.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  vocab.tokens = *std::move(tokens);
  absl::StatusOr<std::vector<std::string>> merges = gguf.GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return merges.status();
  vocab.merges = *std::move(merges);

  if (absl::Status s = ReadTokenTypes(gguf, &vocab.token_types); !s.ok()) return s;
  // Files converted before tokenizer.ggml.pre existed use the original GPT-2 splitting.
  vocab.pre = "gpt-2";
  if (absl::Status s = ReadOptional(gguf.GetString("tokenizer.ggml.pre"), &vocab.pre); !s.ok()) {
    return s;
  }
  // llama.cpp adds BOS for Llama 3 vocabularies unless the file says otherwise.
  vocab.add_bos = vocab.pre == "llama-bpe" || vocab.pre == "llama3" || vocab.pre == "llama-v3";
  for (auto [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", &vocab.bos_id},
                         std::pair{"tokenizer.ggml.eos_token_id", &vocab.eos_id}}) {
    if (absl::Status s = ReadOptionalId(gguf, key, id); !s.ok()) return s;
  }
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    int32_t id = -1;
    if (absl::Status s = ReadOptionalId(gguf, key, &id); !s.ok()) return s;
    if (id >= 0) vocab.extra_end_of_generation_ids.push_back(id);
  }
  if (absl::Status s = ReadOptional(gguf.GetBool("tokenizer.ggml.add_bos_token"), &vocab.add_bos);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ReadOptional(gguf.GetString("tokenizer.chat_template"), &vocab.chat_template);
      !s.ok()) {
    return s;
  }
  return vocab;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += DecodeToken(prev, id);
    prev = id;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGguf(const GgufFile& gguf) {
  absl::StatusOr<std::string> model = gguf.GetString("tokenizer.ggml.model");
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("GGUF tokenizer: ", model.status().message()));
  }
  if (*model == "llama") {
    absl::StatusOr<SpmVocab> vocab = ReadSpmVocab(gguf);
    if (!vocab.ok()) {
      return absl::Status(vocab.status().code(),
                          absl::StrCat("GGUF tokenizer: ", vocab.status().message()));
    }
    absl::StatusOr<std::unique_ptr<SpmTokenizer>> tokenizer =
        SpmTokenizer::Create(*std::move(vocab));
    if (!tokenizer.ok()) return tokenizer.status();
    return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
  }
  if (*model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "GGUF tokenizer: tokenizer.ggml.model \"", *model,
        "\" is not supported (supported: \"gpt2\", byte-level BPE; \"llama\", SentencePiece)"));
  }
  absl::StatusOr<BpeVocab> vocab = ReadBpeVocab(gguf);
  if (!vocab.ok()) {
    return absl::Status(vocab.status().code(),
                        absl::StrCat("GGUF tokenizer: ", vocab.status().message()));
  }
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::Create(*std::move(vocab));
  if (!tokenizer.ok()) return tokenizer.status();
  return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerForModel(
    const Model& model, const std::string& tokenizer_path) {
  const int model_vocab = model.config().vocab_size;
  if (model.format() == ModelFormat::kGguf) {
    if (!tokenizer_path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer path \"", tokenizer_path, "\" given for GGUF model ", model.path(),
          ", which carries its own tokenizer; a tokenizer file is "
          "only for llama2.c checkpoints"));
    }
    if (model.gguf() == nullptr) {
      return absl::InternalError(absl::StrCat(model.path(), ": GGUF model without metadata"));
    }
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = TokenizerFromGguf(*model.gguf());
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat(model.path(), ": ", tokenizer.status().message()));
    }
    // Ids past the embedding's rows would index out of bounds in the forward pass.
    if (model_vocab > 0 && (*tokenizer)->vocab_size() > model_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(model.path(), ": tokenizer has ", (*tokenizer)->vocab_size(),
                       " tokens but the model's vocab_size is ", model_vocab));
    }
    return tokenizer;
  }

  std::string path = tokenizer_path.empty() ? model.tokenizer_path() : tokenizer_path;
  if (path.empty()) {
    const std::string& model_path = model.path();
    path = DefaultLlama2cTokenizerPath(model_path, model_vocab);
    if (!FileExists(path)) {
      return absl::NotFoundError(
          absl::StrCat("llama2.c model ", model_path, " needs a tokenizer file: ", path,
                       " does not exist; pass the tokenizer path (e.g. tok", model_vocab, ".bin)"));
    }
  }
  // The model's fingerprint covers the tokenizer it was loaded with: another one would serve
  // (and bind strategies to) a fingerprint that does not describe it.
  if (!model.tokenizer_sha256().empty() && path != model.tokenizer_path()) {
    absl::StatusOr<std::string> bytes = ReadFileToString(path);
    if (!bytes.ok()) return bytes.status();
    if (Sha256Hex(*bytes) != model.tokenizer_sha256()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tokenizer ", path, " differs from ", model.tokenizer_path(), ", the one model ",
          model.path(),
          " was loaded (and fingerprinted) with; give the tokenizer when loading the model"));
    }
  }
  return LoadLlama2cTokenizer(path, model_vocab);
}

}  // namespace kvshare
