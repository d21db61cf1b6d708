// Model loading behind one API: the llama2.c stories260K checkpoint and the SmolLM2-135M GGUF.
// Expected values come from the files' documentation (assets SOURCES.md, the GGUF metadata) and
// from independent Python readers (numpy for llama2.c, the `gguf` package for GGUF, and
// tests/reference/fingerprint.py for fingerprints); each is cited where it is used.
#include "common/model/model.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service_runtime/locate.h"
#include "tests/model/gguf_builder.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Golden v1 fingerprints (config and weights), computed by Model and cross-checked with
// `python3 tests/reference/fingerprint.py <file>` (hashlib over the same serialisation). The v2
// fingerprint (which adds the tokenizer) is pinned in fingerprint_v2_test.cc.
constexpr char kStoriesFingerprint[] =
    "ee4f2a582c7654b362d237176d73411382ab03d14a2c6d291fb8d85c2c767bd2";
constexpr char kSmolLm2Fingerprint[] =
    "07b65860b54aa57ab1f2ba47da2dab8bd02a29e24d3df9dacec47f36e2b4bd4a";

std::vector<uint8_t> FileBytes(const std::string& path) {
  std::string s = kvshare::testing::ReadFileOrDie(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::unique_ptr<Model> LoadOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

float F32At(const Tensor& t, int64_t row, int64_t col) {
  float v;
  std::memcpy(&v, t.row_data(row) + col * sizeof(float), sizeof(v));
  return v;
}

TEST(Stories260KTest, ConfigMatchesTheCheckpointHeader) {
  std::unique_ptr<Model> m = LoadOrDie(kvshare::testing::Asset("stories260K.bin"));
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  // SOURCES.md: dim 64, hidden_dim 172, n_layers 5, n_heads 8, n_kv_heads 4, vocab_size 512
  // (positive: tied), seq_len 512. run.c's fixed rope_theta and eps.
  EXPECT_EQ(m->format(), ModelFormat::kLlama2c);
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.name, "stories260K");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(m->gguf(), nullptr);
  // All floats but the header and the 2 x 512 x 4 freq_cis: (1056540 - 28) / 4 - 4096.
  EXPECT_EQ(m->parameter_count(), 260032);
  EXPECT_EQ(c.DebugString(),
            "llama 'stories260K': dim 64, hidden_dim 172, n_layers 5, n_heads 8, n_kv_heads 4, "
            "head_dim 8, vocab_size 512, max_seq_len 512, rope_theta 10000, norm_eps 1e-05, "
            "tied output");
}

TEST(Stories260KTest, WeightsAreViewsAtTheRightOffsets) {
  std::unique_ptr<Model> m = LoadOrDie(kvshare::testing::Asset("stories260K.bin"));
  ASSERT_NE(m, nullptr);
  const ModelWeights& w = m->weights();
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_THAT(w.token_embedding.shape, ElementsAre(64, 512));
  EXPECT_THAT(w.layers[0].attn_norm.shape, ElementsAre(64));
  EXPECT_THAT(w.layers[0].wk.shape, ElementsAre(64, 32));
  EXPECT_THAT(w.layers[0].w_down.shape, ElementsAre(172, 64));
  EXPECT_EQ(w.layers[3].wq.name, "blk.3.attn_q.weight");
  EXPECT_EQ(w.output.data, w.token_embedding.data);  // tied
  // Values read with numpy: f = np.frombuffer(raw[28:], '<f4'), sliced in llama2.c order
  // (emb [512][64], rms_att [5][64], wq [5][64][64], wk [5][32][64], wv, wo, rms_ffn,
  // w1 [5][172][64], w2 [5][64][172], w3 [5][172][64], rms_final [64]).
  EXPECT_EQ(F32At(w.token_embedding, 0, 0), -0.29474878f);
  EXPECT_EQ(F32At(w.token_embedding, 511, 63), -0.4240326f);
  EXPECT_EQ(F32At(w.layers[1].attn_norm, 0, 7), 1.8049065f);      // rms_att[1][7]
  EXPECT_EQ(F32At(w.layers[2].wq, 3, 5), -0.092126794f);          // wq[2][3][5]
  EXPECT_EQ(F32At(w.layers[4].wk, 31, 63), -0.26513016f);         // wk[4][31][63]
  EXPECT_EQ(F32At(w.layers[4].w_down, 63, 171), -0.0035068716f);  // w2[4][63][171]
  EXPECT_EQ(F32At(w.layers[0].w_up, 171, 0), 0.11689315f);        // w3[0][171][0]
  EXPECT_EQ(F32At(w.output_norm, 0, 0), 2.458309f);               // rms_final[0]
  EXPECT_EQ(F32At(w.output_norm, 0, 63), 1.7077769f);             // rms_final[63]
}

// A backend that copied a tensor lets its pages go (Transformer::Init); the mapping is private
// and read-only, so reading the tensor again gives the file's bytes back.
TEST(Stories260KTest, ReleasedPagesReadBackTheFilesBytes) {
  std::unique_ptr<Model> m = LoadOrDie(kvshare::testing::Asset("stories260K.bin"));
  ASSERT_NE(m, nullptr);
  const Tensor& emb = m->weights().token_embedding;  // 131,072 bytes: whole pages inside
  ASSERT_GE(emb.nbytes, size_t{4} * 4096);
  const auto* bytes = static_cast<const uint8_t*>(emb.data);
  const std::vector<uint8_t> before(bytes, bytes + emb.nbytes);
  m->ReleaseResidentPages(emb);
  EXPECT_EQ(0, std::memcmp(before.data(), emb.data, emb.nbytes));
  EXPECT_EQ(F32At(emb, 511, 63), -0.4240326f);
  Tensor outside = emb;  // not in the mapping: a no-op
  outside.data = before.data();
  m->ReleaseResidentPages(outside);
  EXPECT_EQ(before[0], bytes[0]);
  // In uneven consecutive slices, as a repacking backend reports them (SourceProgress): the
  // bytes read back the same, and a range outside the mapping is a no-op.
  for (size_t at = 0; at < emb.nbytes; at += 10000) {
    m->ReleaseResidentRange(bytes + at, std::min<size_t>(10000, emb.nbytes - at));
  }
  EXPECT_EQ(0, std::memcmp(before.data(), emb.data, emb.nbytes));
  m->ReleaseResidentRange(before.data(), before.size());
  EXPECT_EQ(before[0], bytes[0]);
}

TEST(SmolLm2Test, ConfigAndTensorTypesMatchTheGguf) {
  std::unique_ptr<Model> m = LoadOrDie(kvshare::testing::SmolLm2Path());
  ASSERT_NE(m, nullptr);
  const ModelConfig& c = m->config();
  EXPECT_EQ(m->format(), ModelFormat::kGguf);
  EXPECT_EQ(c.name, "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_TRUE(c.tied_output);
  // Sum of all 272 tensors' elements (GGUFReader); the tied output is not counted twice.
  EXPECT_EQ(m->parameter_count(), 134515008);

  const ModelWeights& w = m->weights();
  EXPECT_EQ(w.token_embedding.type, DType::kQ8_0);
  EXPECT_THAT(w.token_embedding.shape, ElementsAre(576, 49152));
  EXPECT_EQ(w.output.data, w.token_embedding.data);
  EXPECT_EQ(w.output_norm.type, DType::kF32);
  ASSERT_EQ(w.layers.size(), 30u);
  for (const LayerWeights& l : w.layers) {
    EXPECT_EQ(l.attn_norm.type, DType::kF32);
    EXPECT_EQ(l.ffn_norm.type, DType::kF32);
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      EXPECT_EQ(t->type, DType::kQ4_1) << t->name;
    }
  }
  EXPECT_THAT(w.layers[7].wk.shape, ElementsAre(576, 192));
  EXPECT_THAT(w.layers[7].wo.shape, ElementsAre(576, 576));
  EXPECT_THAT(w.layers[7].w_down.shape, ElementsAre(1536, 576));
  // The view sits at GGUFReader's data_offset for blk.7.attn_k.weight (93374272), whose first
  // bytes Python reads as eb 2a 18 b6.
  const auto* base = static_cast<const uint8_t*>(w.token_embedding.data) - 1785664;
  EXPECT_EQ(static_cast<const uint8_t*>(w.layers[7].wk.data) - base, 93374272);
  EXPECT_EQ(w.layers[7].wk.nbytes, 69120u);
  const auto* k = static_cast<const uint8_t*>(w.layers[7].wk.data);
  EXPECT_THAT(std::vector<uint8_t>(k, k + 4), ElementsAre(0xeb, 0x2a, 0x18, 0xb6));
  EXPECT_EQ(F32At(w.output_norm, 0, 0), 1.7578125f);  // GGUFReader output_norm data[0]

  ASSERT_NE(m->gguf(), nullptr);
  EXPECT_EQ(m->gguf()->GetString("tokenizer.ggml.model").value(), "gpt2");
  EXPECT_EQ(m->gguf()->GetString("tokenizer.ggml.pre").value(), "smollm");
  EXPECT_EQ(m->gguf()->GetStringArray("tokenizer.ggml.merges").value().size(), 48900u);
}

TEST(FingerprintTest, MatchesTheGoldenValuesFromTheReferenceScript) {
  std::unique_ptr<Model> stories = LoadOrDie(kvshare::testing::Asset("stories260K.bin"));
  std::unique_ptr<Model> smol = LoadOrDie(kvshare::testing::SmolLm2Path());
  ASSERT_NE(stories, nullptr);
  ASSERT_NE(smol, nullptr);
  EXPECT_EQ(stories->fingerprint_v1(), kStoriesFingerprint);
  EXPECT_EQ(smol->fingerprint_v1(), kSmolLm2Fingerprint);
}

TEST(FingerprintTest, IsStableAcrossLoadsAndEqualFromPathOrBytes) {
  for (const std::string& path :
       {kvshare::testing::Asset("stories260K.bin"), kvshare::testing::SmolLm2Path()}) {
    std::unique_ptr<Model> a = LoadOrDie(path);
    std::unique_ptr<Model> b = LoadOrDie(path);
    absl::StatusOr<std::unique_ptr<Model>> c = Model::FromBytes(FileBytes(path), "other-name");
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(a->fingerprint().size(), 64u);
    EXPECT_EQ(a->fingerprint(), b->fingerprint()) << path;
    // From bytes there is no directory to find a llama2.c tokenizer in, so v2 differs there.
    EXPECT_EQ(a->fingerprint_v1(), (*c)->fingerprint_v1()) << path;
  }
}

TEST(FingerprintTest, ChangesWhenOneWeightByteChanges) {
  const std::string path = kvshare::testing::Asset("stories260K.bin");
  std::vector<uint8_t> bytes = FileBytes(path);
  bytes[500000] ^= 1;  // inside w1
  absl::StatusOr<std::unique_ptr<Model>> m = Model::FromBytes(std::move(bytes), "flipped");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_NE((*m)->fingerprint_v1(), kStoriesFingerprint);

  std::vector<uint8_t> smol = FileBytes(kvshare::testing::SmolLm2Path());
  smol[smol.size() - 1] ^= 0x80;  // the last byte of output_norm.weight
  m = Model::FromBytes(std::move(smol), "flipped");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_NE((*m)->fingerprint_v1(), kSmolLm2Fingerprint);
}

TEST(FingerprintTest, DependsOnWeightsNotOnFormatMetadataOrTensorOrder) {
  std::unique_ptr<Model> stories = LoadOrDie(kvshare::testing::Asset("stories260K.bin"));
  ASSERT_NE(stories, nullptr);
  // The same weights as a GGUF, tensors in reverse order, with extra metadata.
  testing::GgufBuilder b = testing::LlamaGgufFromModel(*stories);
  std::reverse(b.tensors.begin(), b.tensors.end());
  b.AddString("general.description", "converted for a test");
  absl::StatusOr<std::unique_ptr<Model>> gguf = Model::FromBytes(b.Build(), "stories260K.gguf");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ((*gguf)->format(), ModelFormat::kGguf);
  EXPECT_EQ((*gguf)->config().DebugString(), stories->config().DebugString());
  EXPECT_EQ((*gguf)->fingerprint_v1(), stories->fingerprint_v1());

  // A config field that changes the computation changes the fingerprint.
  ModelConfig config = stories->config();
  config.rope_theta = 10000.5f;
  absl::StatusOr<std::unique_ptr<Model>> theta = Model::FromBytes(
      testing::LlamaGgufFromModel(config, stories->weights()).Build(), "theta.gguf");
  ASSERT_TRUE(theta.ok()) << theta.status();
  EXPECT_NE((*theta)->fingerprint_v1(), stories->fingerprint_v1());
}

TEST(FingerprintTest, HashesAQuantizedModelInOnePass) {
  // Loading includes hashing all 98 MB; report the time so regressions are visible in logs.
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Model> smol = LoadOrDie(kvshare::testing::SmolLm2Path());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_NE(smol, nullptr);
  RecordProperty("smollm2_load_seconds", std::to_string(seconds));
  std::printf("SmolLM2 load + fingerprint: %.3f s\n", seconds);
}

TEST(ModelLoadTest, ReportsMissingAndNonRegularFiles) {
  absl::Status st = Model::Load("/nonexistent/model.bin").status();
  EXPECT_TRUE(absl::IsNotFound(st)) << st;
  EXPECT_THAT(st.ToString(), HasSubstr("/nonexistent/model.bin"));
  EXPECT_THAT(Model::Load("/tmp").status().ToString(), HasSubstr("not a regular file"));

  char tmpl[] = "/tmp/kvshare_model_test_XXXXXX";
  const int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_THAT(Model::Load(tmpl).status().ToString(), HasSubstr("the file is empty"));
  {
    std::ofstream out(tmpl, std::ios::binary);
    out << "hello, this is not a model at all";
  }
  st = Model::Load(tmpl).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.ToString(), HasSubstr("not a GGUF file (magic bytes [68 65 6c 6c]"));
  EXPECT_THAT(st.ToString(), HasSubstr("and not a llama2.c checkpoint"));
  unlink(tmpl);
}

TEST(LocateTest, EnvironmentOverridesWin) {
  absl::StatusOr<std::string> assets = AssetsDir();
  ASSERT_TRUE(assets.ok()) << assets.status();
  EXPECT_TRUE(AssetPath("stories260K.bin").ok());
  EXPECT_TRUE(absl::IsNotFound(AssetPath("no-such-asset.bin").status()));

  setenv("KVSHARE_ASSETS", "/nonexistent/assets", 1);
  EXPECT_THAT(AssetsDir().status().ToString(), HasSubstr("/nonexistent/assets"));
  setenv("KVSHARE_ASSETS", assets->c_str(), 1);
  EXPECT_EQ(AssetsDir().value(), *assets);
  unsetenv("KVSHARE_ASSETS");

  const std::string smol = kvshare::testing::SmolLm2Path();
  setenv("KVSHARE_SMOLLM2_GGUF", "/nonexistent/smol.gguf", 1);
  EXPECT_TRUE(absl::IsNotFound(SmolLm2GgufPath().status()));
  setenv("KVSHARE_SMOLLM2_GGUF", smol.c_str(), 1);
  EXPECT_EQ(SmolLm2GgufPath().value(), smol);
  unsetenv("KVSHARE_SMOLLM2_GGUF");

  setenv("KVSHARE_MODEL", "/models/mine.gguf", 1);
  EXPECT_EQ(DefaultModelPath().value(), "/models/mine.gguf");
  unsetenv("KVSHARE_MODEL");
  EXPECT_EQ(DefaultModelPath().value(), smol);
}

}  // namespace
}  // namespace kvshare
