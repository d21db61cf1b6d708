// Writes the seed corpora of the fuzz targets (scripts/fuzz.sh), one folder per target, from
// the shared assets: stories260K as a llama2.c checkpoint and as a GGUF with a byte-level BPE
// tokenizer in its metadata, tok512.bin, and strategy files with and without provenance.
//   fuzz_seeds OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "common/util/file.h"
#include "service_runtime/locate.h"
#include "tests/model/gguf_builder.h"

namespace {

namespace fs = std::filesystem;

void Write(const fs::path& path, const void* data, size_t size) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}
void Write(const fs::path& path, const std::string& text) { Write(path, text.data(), text.size()); }

int Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_seeds: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return Fail("usage: fuzz_seeds OUT_DIR");
  const fs::path out = argv[1];
  absl::StatusOr<std::string> model_path = kvshare::AssetPath("stories260K.bin");
  absl::StatusOr<std::string> tok_path = kvshare::AssetPath("tok512.bin");
  if (!model_path.ok()) return Fail(model_path.status().ToString());
  if (!tok_path.ok()) return Fail(tok_path.status().ToString());
  absl::StatusOr<std::unique_ptr<kvshare::Model>> model = kvshare::Model::Load(*model_path);
  if (!model.ok()) return Fail(model.status().ToString());

  absl::StatusOr<std::string> checkpoint = kvshare::ReadFileToString(*model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status().ToString());
  Write(out / "llama2c" / "stories260K.bin", *checkpoint);

  absl::StatusOr<std::string> tok = kvshare::ReadFileToString(*tok_path);
  if (!tok.ok()) return Fail(tok.status().ToString());
  const std::string vocab_512("\x00\x02", 2);  // tokenizer_fuzz's vocabulary-size prefix
  Write(out / "tokenizer" / "tok512.bin", vocab_512 + *tok);

  kvshare::testing::GgufBuilder gguf = kvshare::testing::LlamaGgufFromModel(**model);
  const std::vector<uint8_t> plain = gguf.Build();
  Write(out / "gguf" / "stories260K-no-tokenizer.gguf", plain.data(), plain.size());
  // A byte-level BPE vocabulary as SmolLM2's GGUF spells it, cut to the model's 512 entries.
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int b = 0; b < 256 && tokens.size() < 300; ++b)
    tokens.push_back(std::string(1, 'A' + b % 26) + std::to_string(b));
  while (tokens.size() < 512) tokens.push_back("\xc4\xa0t" + std::to_string(tokens.size()));
  gguf.AddString("tokenizer.ggml.model", "gpt2");
  gguf.AddString("tokenizer.ggml.pre", "smollm");
  gguf.AddStringArray("tokenizer.ggml.tokens", tokens);
  gguf.AddStringArray("tokenizer.ggml.merges", {"\xc4\xa0 t", "A 0", "h e"});
  gguf.AddU32("tokenizer.ggml.bos_token_id", 1);
  gguf.AddU32("tokenizer.ggml.eos_token_id", 2);
  gguf.AddBool("tokenizer.ggml.add_bos_token", false);
  const std::vector<uint8_t> with_tokenizer = gguf.Build();
  Write(out / "gguf" / "stories260K-bpe.gguf", with_tokenizer.data(), with_tokenizer.size());

  const std::string fingerprint(64, 'a');
  Write(out / "strategy" / "identity.json",
        kvshare::SharingStrategy::Identity(5, fingerprint).ToJson());
  absl::StatusOr<kvshare::SharingStrategy> shared =
      kvshare::SharingStrategy::Create({0, 1, 1, 3, 0}, fingerprint);
  if (!shared.ok()) return Fail(shared.status().ToString());
  shared->provenance().method = "kvsharer";
  shared->provenance().order = "dissimilar";
  shared->provenance().note = "seed";
  Write(out / "strategy" / "shared.json", shared->ToJson());
  std::printf("fuzz_seeds: wrote seeds under %s\n", out.c_str());
  return 0;
}
