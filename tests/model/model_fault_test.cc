// Bad model files: truncated and bit-flipped copies of both real models never crash or read
// out of bounds (run under ASan too), and crafted faults give messages naming the problem.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/model/gguf.h"
#include "common/model/gguf_llama.h"
#include "common/model/model.h"
#include "common/model/model_layout.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/gguf_builder.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<uint8_t> FileBytes(const std::string& path) {
  std::string s = kvshare::testing::ReadFileOrDie(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Loads an exact-size heap copy of the first `n` bytes, so ASan sees any read past the end.
absl::Status LoadPrefix(const std::vector<uint8_t>& file, size_t n) {
  return Model::FromBytes(std::vector<uint8_t>(file.begin(), file.begin() + n), "cut").status();
}

size_t Find(const std::vector<uint8_t>& hay, const std::string& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

// Every byte of the first 4 KiB, `spread` positions evenly over the file, and the last 8.
std::set<size_t> TruncationPoints(size_t size, size_t spread) {
  std::set<size_t> points;
  for (size_t n = 0; n < 4096 && n < size; ++n) points.insert(n);
  for (size_t i = 0; i < spread; ++i) points.insert(size * i / spread);
  for (size_t back = 1; back <= 8; ++back) points.insert(size - back);
  return points;
}

// Checks a successful load's invariants: a valid config and every tensor inside the buffer.
void ExpectConsistent(const ModelConfig& c, const ModelWeights& w, const uint8_t* data,
                      size_t size) {
  ASSERT_TRUE(ValidateModelConfig(c).ok()) << c.DebugString();
  if (data == nullptr) return;
  const size_t n = CanonicalTensorSpecs(c).size();
  for (size_t i = 0; i < n; ++i) {
    const Tensor& t = CanonicalTensor(w, i);
    const auto* p = static_cast<const uint8_t*>(t.data);
    ASSERT_TRUE(p >= data && p + t.nbytes <= data + size) << t.name;
    ASSERT_EQ(t.nbytes, StorageBytes(t.type, t.elements())) << t.name;
  }
}

class ModelFaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    stories_ = new std::vector<uint8_t>(FileBytes(kvshare::testing::Asset("stories260K.bin")));
    smol_ = new std::vector<uint8_t>(FileBytes(kvshare::testing::SmolLm2Path()));
  }
  static void TearDownTestSuite() {
    delete stories_;
    delete smol_;
  }
  static std::vector<uint8_t>* stories_;
  static std::vector<uint8_t>* smol_;
};
std::vector<uint8_t>* ModelFaultTest::stories_ = nullptr;
std::vector<uint8_t>* ModelFaultTest::smol_ = nullptr;

TEST_F(ModelFaultTest, TruncatedStories260KIsAlwaysAnError) {
  const std::vector<uint8_t>& file = *stories_;
  for (size_t n : TruncationPoints(file.size(), 200)) {
    absl::Status st = LoadPrefix(file, n);
    ASSERT_FALSE(st.ok()) << "truncated at " << n;
    ASSERT_TRUE(absl::IsInvalidArgument(st)) << st;
  }
  EXPECT_EQ(LoadPrefix(file, file.size() - 1).message(),
            "cut: not a GGUF file (magic bytes [40 00 00 00], expected 47 47 55 46 'GGUF') and "
            "not a llama2.c checkpoint: llama2.c checkpoint: header (dim 64, hidden_dim 172, "
            "n_layers 5, n_heads 8, n_kv_heads 4, vocab_size 512, seq_len 512) implies 1056540 "
            "bytes, the file has 1056539");
  EXPECT_THAT(LoadPrefix(file, 27).ToString(),
              HasSubstr("the file has 27 bytes, fewer than the 28-byte header"));
}

TEST_F(ModelFaultTest, TruncatedSmolLm2IsAlwaysAnError) {
  const std::vector<uint8_t>& file = *smol_;
  absl::StatusOr<GgufFile> whole = GgufFile::Parse(file.data(), file.size());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const size_t data_start = whole->data_offset();
  const size_t table_start = Find(file, std::string("\x11\0\0\0\0\0\0\0token_embd.weight", 25));
  ASSERT_LT(table_start, data_start);

  std::set<size_t> points = TruncationPoints(file.size(), 200);
  for (size_t i = 0; i <= 60; ++i) {  // inside the tensor table and its padding
    points.insert(table_start + (data_start - table_start) * i / 60);
  }
  int header_region = 0, in_table = 0;
  for (size_t n : points) {
    if (n <= data_start) {
      ++header_region;
      absl::Status st = LoadPrefix(file, n);
      ASSERT_FALSE(st.ok()) << "truncated at " << n;
      if (n >= table_start) {
        ++in_table;
        ASSERT_THAT(std::string(st.message()),
                    ::testing::AnyOf(HasSubstr("tensor info"), HasSubstr("is outside the file")))
            << n;
      }
    } else {
      // Past the tensor table the parser reads nothing beyond it, so parse the prefix in
      // place instead of copying up to 98 MB per point; a few exact copies follow below.
      absl::Status st = GgufFile::Parse(file.data(), n).status();
      ASSERT_TRUE(absl::IsDataLoss(st)) << n << ": " << st;
      ASSERT_THAT(st.ToString(), HasSubstr("is outside the file")) << n;
    }
  }
  EXPECT_GT(header_region, 4096);
  EXPECT_GT(in_table, 50);
  for (size_t n : {data_start + 1, file.size() / 2, file.size() - 1}) {
    absl::Status st = LoadPrefix(file, n);
    EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  }
  EXPECT_EQ(LoadPrefix(file, file.size() - 1).message(),
            "cut: GGUF: tensor 'output_norm.weight' data [98360128, 98362432) is outside the "
            "file (size 98362431)");
}

TEST_F(ModelFaultTest, BitFlippedStories260KNeverCrashes) {
  const std::vector<uint8_t>& file = *stories_;
  int ok = 0;
  // Every single-bit flip of the 28-byte header...
  for (size_t bit = 0; bit < 28 * 8; ++bit) {
    std::vector<uint8_t> copy = file;
    copy[bit / 8] ^= uint8_t(1u << (bit % 8));
    absl::StatusOr<std::unique_ptr<Model>> m = Model::FromBytes(std::move(copy), "flip");
    if (m.ok()) ++ok;
  }
  // ...and multi-bit flips anywhere in the header with a fixed seed.
  std::mt19937_64 rng(260);
  for (int i = 0; i < 100; ++i) {
    std::vector<uint8_t> copy = file;
    for (int k = 0; k < 1 + int(rng() % 4); ++k) copy[rng() % 28] ^= uint8_t(1u << (rng() % 8));
    absl::StatusOr<std::unique_ptr<Model>> m = Model::FromBytes(std::move(copy), "flip");
    if (m.ok()) {
      ++ok;
      ExpectConsistent((*m)->config(), (*m)->weights(), nullptr, 0);
    }
  }
  // The header fixes the file size exactly, so almost no flip survives.
  std::printf("stories260K header flips: %d of 324 loaded\n", ok);
}

TEST_F(ModelFaultTest, BitFlippedSmolLm2NeverCrashesOrEscapesTheBuffer) {
  std::vector<uint8_t>& file = *smol_;
  absl::StatusOr<GgufFile> whole = GgufFile::Parse(file.data(), file.size());
  ASSERT_TRUE(whole.ok());
  const size_t data_start = whole->data_offset();
  const size_t table_start = Find(file, std::string("\x11\0\0\0\0\0\0\0token_embd.weight", 25));
  std::mt19937_64 rng(135);
  // Thirds: the first 4 KiB (header, config keys, the start of the token list), the tensor
  // table, and anywhere before the data.
  auto pick = [&](int i) -> size_t {
    switch (i % 3) {
      case 0:
        return rng() % 4096;
      case 1:
        return table_start + rng() % (data_start - table_start);
      default:
        return rng() % data_start;
    }
  };
  int parsed = 0, loaded = 0;
  for (int i = 0; i < 300; ++i) {
    std::vector<std::pair<size_t, uint8_t>> flips;
    for (int k = 0; k < 1 + int(rng() % 3); ++k) {
      flips.push_back({pick(i), uint8_t(1u << (rng() % 8))});
    }
    for (auto [at, mask] : flips) file[at] ^= mask;
    // In place (no 98 MB copy per case): parse, then bind to a llama config and views.
    absl::StatusOr<GgufFile> gguf = GgufFile::Parse(file.data(), file.size());
    if (gguf.ok()) {
      ++parsed;
      ModelConfig c;
      ModelWeights w;
      if (LoadLlamaFromGguf(*gguf, file.data(), &c, &w).ok()) {
        ++loaded;
        ExpectConsistent(c, w, file.data(), file.size());
      }
    }
    for (auto it = flips.rbegin(); it != flips.rend(); ++it) file[it->first] ^= it->second;
  }
  // A few through the public entry point with exact copies (and the fingerprint).
  std::set<std::string> fingerprints;
  for (int i = 0; i < 6; ++i) {
    std::vector<uint8_t> copy = file;
    copy[pick(i)] ^= uint8_t(1u << (rng() % 8));
    absl::StatusOr<std::unique_ptr<Model>> m = Model::FromBytes(std::move(copy), "flip");
    if (m.ok()) fingerprints.insert((*m)->fingerprint());
  }
  std::printf("SmolLM2 flips: %d of 300 parsed, %d loaded\n", parsed, loaded);
  EXPECT_EQ(file, FileBytes(kvshare::testing::SmolLm2Path())) << "flips were not undone";
}

// A valid llama GGUF with stories260K's weights, for crafting model-level faults.
class CraftedGgufTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Model>> m =
        Model::Load(kvshare::testing::Asset("stories260K.bin"));
    ASSERT_TRUE(m.ok()) << m.status();
    stories_ = *std::move(m);
    builder_ = testing::LlamaGgufFromModel(*stories_);
    ASSERT_TRUE(Load(builder_.Build()).ok());
  }
  static absl::Status Load(std::vector<uint8_t> bytes) {
    return Model::FromBytes(std::move(bytes), "crafted.gguf").status();
  }
  testing::GgufBuilder::TensorEntry& TensorNamed(const std::string& name) {
    for (auto& t : builder_.tensors) {
      if (t.name == name) return t;
    }
    ADD_FAILURE() << name;
    return builder_.tensors[0];
  }

  std::unique_ptr<Model> stories_;
  testing::GgufBuilder builder_;
};

TEST_F(CraftedGgufTest, WrongMagic) {
  std::vector<uint8_t> bytes = builder_.Build();
  bytes[3] = 'X';
  absl::Status st = Load(bytes);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(std::string(st.message()),
              StartsWith("crafted.gguf: not a GGUF file (magic bytes [47 47 55 58], expected "
                         "47 47 55 46 'GGUF') and not a llama2.c checkpoint: llama2.c "
                         "checkpoint: header (dim 1481983815,"));
}

TEST_F(CraftedGgufTest, Version1) {
  builder_.version = 1;
  EXPECT_EQ(Load(builder_.Build()).message(),
            "crafted.gguf: GGUF: version 1 at byte 4 is not supported (expected 2 or 3)");
}

TEST_F(CraftedGgufTest, UnknownTensorTypeNamesTheTensor) {
  builder_.tensors[3].type = 99;  // blk.0.attn_k.weight
  absl::Status st = Load(builder_.Build());
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.ToString(), HasSubstr("GGUF: tensor info 3 ('blk.0.attn_k.weight') at byte "));
  EXPECT_THAT(st.ToString(), HasSubstr(": tensor type 99 is not supported (supported: F32=0"));
}

TEST_F(CraftedGgufTest, ShapeThatDisagreesWithTheConfig) {
  auto& k = TensorNamed("blk.3.attn_k.weight");
  k.dims = {64, 16};
  k.data.resize(64 * 16 * 4);
  EXPECT_EQ(Load(builder_.Build()).message(),
            "crafted.gguf: GGUF: blk.3.attn_k.weight has shape [64, 16], expected [64, 32] "
            "(cols dim, rows n_kv_heads*head_dim)");
}

TEST_F(CraftedGgufTest, OutOfRangeOffset) {
  TensorNamed("blk.1.ffn_up.weight").offset = uint64_t{1} << 40;
  absl::Status st = Load(builder_.Build());
  EXPECT_TRUE(absl::IsDataLoss(st));
  EXPECT_THAT(st.ToString(), HasSubstr("GGUF: tensor 'blk.1.ffn_up.weight' data ["));
  EXPECT_THAT(st.ToString(), HasSubstr(") is outside the file (size "));
}

TEST_F(CraftedGgufTest, MisalignedOffset) {
  TensorNamed("blk.0.attn_norm.weight").offset = 36;
  EXPECT_EQ(Load(builder_.Build()).message(),
            "crafted.gguf: GGUF: tensor 'blk.0.attn_norm.weight' offset 36 is not a multiple of "
            "the alignment 32");
}

TEST_F(CraftedGgufTest, AbsurdStringLength) {
  testing::ByteWriter w;
  w.Put<uint64_t>(uint64_t{1} << 63);
  builder_.AddRaw("general.description", 8, w.bytes());
  absl::Status st = Load(builder_.Build());
  EXPECT_TRUE(absl::IsDataLoss(st));
  EXPECT_THAT(st.ToString(), HasSubstr("('general.description') value string length "
                                       "9223372036854775808 at byte"));
}

TEST_F(CraftedGgufTest, MissingTensorNormNotF32UnexpectedTensorWrongArchitecture) {
  {
    testing::GgufBuilder b = builder_;
    b.tensors.erase(b.tensors.begin() + 1 + 2 * kTensorsPerLayer + 7);  // blk.2.ffn_up
    EXPECT_EQ(Load(b.Build()).message(),
              "crafted.gguf: GGUF: tensor blk.2.ffn_up.weight is missing (expected shape "
              "[64, 172]: cols dim, rows hidden_dim)");
  }
  {
    testing::GgufBuilder b = builder_;
    b.tensors[1].type = 1;  // blk.0.attn_norm.weight as F16
    b.tensors[1].data.resize(64 * 2);
    EXPECT_EQ(Load(b.Build()).message(),
              "crafted.gguf: GGUF: blk.0.attn_norm.weight has type F16, expected F32");
  }
  {
    testing::GgufBuilder b = builder_;
    b.AddTensor("rope_freqs.weight", {4}, 0, std::vector<uint8_t>(16));
    EXPECT_THAT(Load(b.Build()).ToString(),
                HasSubstr("GGUF: tensor rope_freqs.weight is not part of a llama model"));
  }
  {
    testing::GgufBuilder b;
    b.AddString("general.architecture", "qwen2");
    EXPECT_THAT(Load(b.Build()).ToString(),
                HasSubstr("general.architecture is 'qwen2'; only 'llama' is supported"));
  }
  {
    testing::GgufBuilder b = builder_;
    b.AddString("llama.rope.scaling.type", "linear");
    EXPECT_TRUE(absl::IsUnimplemented(Load(b.Build())));
  }
}

TEST_F(CraftedGgufTest, ConfigValuesAreValidated) {
  testing::GgufBuilder b = testing::GgufBuilder();
  ModelConfig c = stories_->config();
  c.n_kv_heads = 3;  // 8 heads are not a multiple of 3
  b = testing::LlamaGgufFromModel(c, stories_->weights());
  EXPECT_THAT(Load(b.Build()).ToString(),
              HasSubstr("GGUF: llama config: n_heads 8 is not a multiple of n_kv_heads 3"));
}

TEST_F(ModelFaultTest, SmolLm2ShapeMismatchInTheRealTensorTable) {
  std::vector<uint8_t> copy = *smol_;
  const std::string name = "blk.3.attn_k.weight";
  const size_t at = Find(copy, std::string("\x13\0\0\0\0\0\0\0", 8) + name);
  ASSERT_NE(at, std::string::npos);
  const uint64_t rows = 128;  // dims[1]: after the length, name, n_dims and dims[0]
  std::memcpy(copy.data() + at + 8 + name.size() + 4 + 8, &rows, 8);
  EXPECT_EQ(Model::FromBytes(std::move(copy), "smol").status().message(),
            "smol: GGUF: blk.3.attn_k.weight has shape [576, 128], expected [576, 192] (cols "
            "dim, rows n_kv_heads*head_dim)");
}

TEST(Llama2cFaultTest, HeaderValuesAndSizeAreChecked) {
  auto with_header = [](std::vector<int32_t> h, size_t floats) {
    std::vector<uint8_t> b(28 + floats * 4);
    std::memcpy(b.data(), h.data(), 28);
    return Model::FromBytes(std::move(b), "tiny.bin").status();
  };
  EXPECT_THAT(with_header({64, 172, 5, 7, 7, 512, 512}, 0).ToString(),
              HasSubstr("dim 64 is not n_heads 7 * head_dim 9"));
  EXPECT_THAT(with_header({64, 172, 5, 8, 3, 512, 512}, 0).ToString(),
              HasSubstr("n_heads 8 is not a multiple of n_kv_heads 3"));
  EXPECT_THAT(with_header({0, 172, 5, 8, 4, 512, 512}, 0).ToString(),
              HasSubstr("dim is 0, must be in [1, 65536]"));
  EXPECT_THAT(with_header({64, 172, 5, 8, 4, INT32_MIN, 512}, 0).ToString(),
              HasSubstr("vocab_size is 0"));
  EXPECT_THAT(with_header({24, 8, 1, 8, 8, 4, 4}, 0).ToString(), HasSubstr("head_dim 3 is odd"));
  // dim 8, hidden 16, 1 layer, 2 heads (head_dim 4), 1 kv head, vocab 4, seq 2, tied:
  // embedding, 2 norms, wq + wo, wk + wv, w1 + w2 + w3, final norm, freq_cis = 640 floats.
  const size_t floats = 4 * 8 + 2 * 8 + 2 * 64 + 2 * 4 * 8 + 3 * 16 * 8 + 8 + 2 * 4;
  EXPECT_TRUE(with_header({8, 16, 1, 2, 1, 4, 2}, floats).ok());
  EXPECT_THAT(with_header({8, 16, 1, 2, 1, 4, 2}, floats + 1).ToString(),
              HasSubstr("implies 2588 bytes, the file has 2592"));
  // Negative vocab: an untied classifier of vocab x dim floats must follow.
  EXPECT_THAT(with_header({8, 16, 1, 2, 1, -4, 2}, floats).ToString(),
              HasSubstr("implies 2716 bytes, the file has 2588"));
  EXPECT_TRUE(with_header({8, 16, 1, 2, 1, -4, 2}, floats + 32).ok());
}

}  // namespace
}  // namespace kvshare
