// GGUF parsing: the real SmolLM2-135M-Instruct Q4_1 file (expected values read with the `gguf`
// PyPI package's GGUFReader, see comments) and small crafted files for each rule.
#include "common/model/gguf.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/gguf_builder.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using testing::GgufBuilder;
using ::testing::HasSubstr;

absl::StatusOr<GgufFile> Parse(const std::vector<uint8_t>& b) {
  return GgufFile::Parse(b.data(), b.size());
}

std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

class SmolLm2GgufTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    bytes_ = new std::string(kvshare::testing::ReadFileOrDie(kvshare::testing::SmolLm2Path()));
  }
  static void TearDownTestSuite() { delete bytes_; }
  static const uint8_t* data() { return reinterpret_cast<const uint8_t*>(bytes_->data()); }
  static GgufFile ParseOrDie() {
    absl::StatusOr<GgufFile> f = GgufFile::Parse(data(), bytes_->size());
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *std::move(f) : GgufFile();
  }
  // The first and last bytes of a tensor's data, in hex.
  static std::string Head(const GgufTensorInfo& t, size_t n) {
    return absl::BytesToHexString(absl::string_view(bytes_->data() + t.offset, n));
  }
  static std::string Tail(const GgufTensorInfo& t, size_t n) {
    return absl::BytesToHexString(absl::string_view(bytes_->data() + t.offset + t.nbytes - n, n));
  }
  static std::string* bytes_;
};
std::string* SmolLm2GgufTest::bytes_ = nullptr;

TEST_F(SmolLm2GgufTest, HeaderMatchesGgufReader) {
  GgufFile f = ParseOrDie();
  EXPECT_EQ(bytes_->size(), 98362432u);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);  // no general.alignment key: the default
  EXPECT_EQ(f.Find("general.alignment"), nullptr);
  EXPECT_EQ(f.metadata().size(), 33u);   // GGUF.kv_count
  EXPECT_EQ(f.tensors().size(), 272u);   // GGUF.tensor_count
  EXPECT_EQ(f.data_offset(), 1785664u);  // GGUFReader.data_offset
}

TEST_F(SmolLm2GgufTest, TensorInfosMatchGgufReader) {
  GgufFile f = ParseOrDie();
  // name, type, shape, GGUFReader data_offset (absolute) and n_bytes, first 8 and last 4 bytes
  // of the data read at that offset with Python.
  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, DType::kQ8_0);
  EXPECT_THAT(embd->shape, ElementsAre(576, 49152));
  EXPECT_EQ(embd->offset, 1785664u);
  EXPECT_EQ(embd->nbytes, 30081024u);
  EXPECT_EQ(Head(*embd, 8), "3219d60d13f7e5ee");
  EXPECT_EQ(Tail(*embd, 4), "2d4abbe8");

  const GgufTensorInfo* q0 = f.FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(q0, nullptr);
  EXPECT_EQ(q0->type, DType::kQ4_1);
  EXPECT_THAT(q0->shape, ElementsAre(576, 576));
  EXPECT_EQ(q0->offset, 33806656u);
  EXPECT_EQ(q0->nbytes, 207360u);
  EXPECT_EQ(Head(*q0, 8), "0f30d8b945876540");
  EXPECT_EQ(Tail(*q0, 4), "58312b06");

  const GgufTensorInfo* k7 = f.FindTensor("blk.7.attn_k.weight");
  ASSERT_NE(k7, nullptr);
  EXPECT_THAT(k7->shape, ElementsAre(576, 192));
  EXPECT_EQ(k7->offset, 93374272u);
  EXPECT_EQ(k7->nbytes, 69120u);
  EXPECT_EQ(Head(*k7, 8), "eb2a18b6d75d62c8");
  EXPECT_EQ(Tail(*k7, 4), "31774765");

  const GgufTensorInfo* down = f.FindTensor("blk.29.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_THAT(down->shape, ElementsAre(1536, 576));
  EXPECT_EQ(down->offset, 80630848u);
  EXPECT_EQ(Head(*down, 8), "e229d8b5f29c4cd9");
  EXPECT_EQ(Tail(*down, 4), "93c86f95");

  const GgufTensorInfo* norm = f.FindTensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, DType::kF32);
  EXPECT_THAT(norm->shape, ElementsAre(576));
  EXPECT_EQ(norm->offset, 98360128u);
  EXPECT_EQ(norm->offset + norm->nbytes, bytes_->size());  // the last tensor ends the file
  Tensor view = f.TensorView(*norm, data());
  const float* w = static_cast<const float*>(view.data);
  EXPECT_EQ(w[0], 1.7578125f);                        // GGUFReader tensor.data[0]
  EXPECT_EQ(w[575], 1.984375f);                       // tensor.data[575]
  EXPECT_EQ(f.FindTensor("output.weight"), nullptr);  // tied classifier
}

TEST_F(SmolLm2GgufTest, MetadataGettersReturnTheStoredValues) {
  GgufFile f = ParseOrDie();
  EXPECT_EQ(f.GetString("general.architecture").value(), "llama");
  EXPECT_EQ(f.GetString("tokenizer.ggml.model").value(), "gpt2");
  EXPECT_EQ(f.GetString("tokenizer.ggml.pre").value(), "smollm");
  EXPECT_EQ(f.GetInt("llama.block_count").value(), 30);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.bos_token_id").value(), 1);
  EXPECT_EQ(f.GetInt("tokenizer.ggml.eos_token_id").value(), 2);
  EXPECT_EQ(f.GetFloat("llama.rope.freq_base").value(), 100000.0);
  EXPECT_FLOAT_EQ(f.GetFloat("llama.attention.layer_norm_rms_epsilon").value(), 1e-5f);
  EXPECT_EQ(f.GetBool("tokenizer.ggml.add_bos_token").value(), false);
  EXPECT_THAT(f.GetStringArray("general.languages").value(), ElementsAre("en"));

  std::vector<std::string> merges = f.GetStringArray("tokenizer.ggml.merges").value();
  ASSERT_EQ(merges.size(), 48900u);
  EXPECT_EQ(merges[0], "\xC4\xA0 t");  // "Ġ t"
  std::vector<std::string> tokens = f.GetStringArray("tokenizer.ggml.tokens").value();
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[1], "<|im_start|>");
  EXPECT_EQ(tokens[2], "<|im_end|>");
  EXPECT_EQ(tokens[100], "t");
  EXPECT_EQ(tokens[49151], "ectable");
  std::vector<int64_t> types = f.GetIntArray("tokenizer.ggml.token_type").value();
  ASSERT_EQ(types.size(), 49152u);
  EXPECT_EQ(types[0], 3);    // control
  EXPECT_EQ(types[100], 1);  // normal
  EXPECT_THAT(f.GetString("tokenizer.chat_template").value(), HasSubstr("<|im_start|>"));
}

TEST_F(SmolLm2GgufTest, GettersNameTheKeyOnAbsenceOrTypeMismatch) {
  GgufFile f = ParseOrDie();
  absl::Status missing = f.GetInt("llama.no_such_key").status();
  EXPECT_TRUE(absl::IsNotFound(missing));
  EXPECT_THAT(missing.ToString(), HasSubstr("'llama.no_such_key'"));

  absl::Status wrong = f.GetString("llama.block_count").status();
  EXPECT_TRUE(absl::IsInvalidArgument(wrong));
  EXPECT_THAT(wrong.ToString(), HasSubstr("'llama.block_count' has type U32, expected STRING"));
  EXPECT_THAT(f.GetIntArray("tokenizer.ggml.tokens").status().ToString(),
              HasSubstr("has type ARRAY of STRING, expected ARRAY of integers"));
  EXPECT_FALSE(f.GetBool("general.name").ok());
  EXPECT_FALSE(f.GetFloat("general.name").ok());
}

TEST(GgufTest, ParsesEveryValueTypeIncludingNestedArrays) {
  GgufBuilder b;
  auto payload = [](auto v) {
    std::vector<uint8_t> p(sizeof(v));
    std::memcpy(p.data(), &v, sizeof(v));
    return p;
  };
  b.AddRaw("u8", 0, payload(uint8_t{200}));
  b.AddRaw("i8", 1, payload(int8_t{-100}));
  b.AddRaw("u16", 2, payload(uint16_t{60000}));
  b.AddRaw("i16", 3, payload(int16_t{-30000}));
  b.AddU32("u32", 4000000000u);
  b.AddI32("i32", -2000000000);
  b.AddF32("f32", 0.25f);
  b.AddBool("bool", true);
  b.AddString("str", "h\xC3\xA9llo");
  b.AddU64("u64", 18000000000000000000ull);
  b.AddRaw("i64", 11, payload(int64_t{-9000000000000000000}));
  b.AddRaw("f64", 12, payload(2.5));
  // [[1, 2], [3]] as an array of arrays of int32.
  testing::ByteWriter nested;
  nested.Put<uint32_t>(9);
  nested.Put<uint64_t>(2);
  nested.Put<uint32_t>(5);
  nested.Put<uint64_t>(2);
  nested.Put<int32_t>(1);
  nested.Put<int32_t>(2);
  nested.Put<uint32_t>(5);
  nested.Put<uint64_t>(1);
  nested.Put<int32_t>(3);
  b.AddRaw("nested", 9, nested.bytes());
  b.AddTensor("w", {32, 2}, 0, F32Bytes(std::vector<float>(64, 1.5f)));
  absl::StatusOr<GgufFile> f = Parse(b.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->GetInt("u8").value(), 200);
  EXPECT_EQ(f->GetInt("i8").value(), -100);
  EXPECT_EQ(f->GetInt("u16").value(), 60000);
  EXPECT_EQ(f->GetInt("i16").value(), -30000);
  EXPECT_EQ(f->GetInt("u32").value(), 4000000000);
  EXPECT_EQ(f->GetInt("i32").value(), -2000000000);
  EXPECT_EQ(f->GetFloat("f32").value(), 0.25);
  EXPECT_EQ(f->GetFloat("i32").value(), -2e9);  // integers widen to float on request
  EXPECT_EQ(f->GetBool("bool").value(), true);
  EXPECT_EQ(f->GetString("str").value(), "h\xC3\xA9llo");
  EXPECT_EQ(std::get<uint64_t>(f->Find("u64")->value), 18000000000000000000ull);
  EXPECT_THAT(f->GetInt("u64").status().ToString(), HasSubstr("does not fit in int64"));
  EXPECT_EQ(f->GetInt("i64").value(), -9000000000000000000);
  EXPECT_EQ(f->GetFloat("f64").value(), 2.5);
  const GgufValue* n = f->Find("nested");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->type, GgufType::kArray);
  EXPECT_EQ(n->array_type, GgufType::kArray);
  const auto& outer = std::get<std::vector<GgufValue>>(n->value);
  ASSERT_EQ(outer.size(), 2u);
  EXPECT_EQ(outer[0].array_type, GgufType::kI32);
  // Integer arrays hold their elements widened, in one vector.
  const auto& first = std::get<std::vector<int64_t>>(outer[0].value);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[1], 2);
  EXPECT_EQ(std::get<std::vector<int64_t>>(outer[1].value)[0], 3);
  ASSERT_EQ(f->tensors().size(), 1u);
  EXPECT_EQ(f->tensors()[0].nbytes, 256u);
}

TEST(GgufTest, HonoursGeneralAlignment) {
  GgufBuilder b;
  b.alignment = 64;
  b.AddU32("general.alignment", 64);
  b.AddTensor("a", {8}, 0, F32Bytes(std::vector<float>(8, 1.0f)));  // 32 bytes, then padding
  b.AddTensor("b", {8}, 0, F32Bytes(std::vector<float>(8, 2.0f)));
  std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> f = Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->FindTensor("b")->offset, f->data_offset() + 64);
  Tensor t = f->TensorView(*f->FindTensor("b"), bytes.data());
  EXPECT_EQ(static_cast<const float*>(t.data)[7], 2.0f);
}

TEST(GgufTest, AcceptsVersion2) {
  GgufBuilder b;
  b.version = 2;
  b.AddString("general.architecture", "llama");
  EXPECT_TRUE(Parse(b.Build()).ok());
}

TEST(GgufTest, RejectsBadMagicAndVersion) {
  GgufBuilder b;
  std::vector<uint8_t> bytes = b.Build();
  bytes[3] = 'X';
  absl::Status st = Parse(bytes).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.ToString(), HasSubstr("bad magic"));

  b.version = 1;
  st = Parse(b.Build()).status();
  EXPECT_THAT(st.ToString(), HasSubstr("GGUF: version 1 at byte 4 is not supported"));
  b.version = 0x03000000;  // a big-endian v3 file read little-endian
  EXPECT_THAT(Parse(b.Build()).status().ToString(), HasSubstr("big-endian"));
}

TEST(GgufTest, TruncationNamesTheFieldAndByte) {
  GgufBuilder b;
  b.AddString("general.name", "x");
  b.AddTensor("blk.1.attn_q.weight", {32, 2}, 0, F32Bytes(std::vector<float>(64, 0.f)));
  std::vector<uint8_t> bytes = b.Build();
  // Header 24 bytes; kv: key 8+12, type 4, value 8+1 = 33 -> tensor info at 57; name 8+19
  // -> n_dims at 84, dims at 88.
  std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + 90);
  absl::Status st = Parse(cut).status();
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_EQ(st.message(),
            "GGUF: truncated at byte 88 while reading tensor info 0 ('blk.1.attn_q.weight') "
            "dims (need 8 bytes, 2 left)");
  // 40 bytes cannot hold even one 24-byte tensor info after the header.
  cut.assign(bytes.begin(), bytes.begin() + 40);
  EXPECT_THAT(Parse(cut).status().ToString(),
              HasSubstr("tensor_count 1 at byte 8 cannot fit in the 16 bytes left"));
  GgufBuilder no_tensors;
  no_tensors.AddString("general.name", "x");
  bytes = no_tensors.Build();
  cut.assign(bytes.begin(), bytes.begin() + 40);
  EXPECT_EQ(Parse(cut).status().message(),
            "GGUF: metadata key 0 string length 12 at byte 24 exceeds the 8 bytes left in the "
            "file");
  cut.assign(bytes.begin(), bytes.begin() + 10);
  EXPECT_EQ(Parse(cut).status().message(),
            "GGUF: truncated at byte 8 while reading tensor_count (need 8 bytes, 2 left)");
}

TEST(GgufTest, RejectsHugeCountsAndLengthsBeforeAllocating) {
  {
    GgufBuilder b;
    testing::ByteWriter w;
    w.Put<uint64_t>(uint64_t{1} << 63);  // string length 2^63
    b.AddRaw("general.name", 8, w.bytes());
    absl::Status st = Parse(b.Build()).status();
    EXPECT_TRUE(absl::IsDataLoss(st));
    EXPECT_THAT(st.ToString(), HasSubstr("metadata key 0 ('general.name') value string length "
                                         "9223372036854775808 at byte"));
  }
  {
    GgufBuilder b;
    testing::ByteWriter w;
    w.Put<uint32_t>(5);
    w.Put<uint64_t>(uint64_t{1} << 60);  // 2^60 int32 elements
    b.AddRaw("tokenizer.ggml.token_type", 9, w.bytes());
    EXPECT_THAT(Parse(b.Build()).status().ToString(),
                HasSubstr("array of 1152921504606846976 I32 elements"));
  }
  {
    std::vector<uint8_t> bytes = GgufBuilder().Build();
    const uint64_t kv_count = uint64_t{1} << 60;
    std::memcpy(bytes.data() + 16, &kv_count, 8);
    EXPECT_THAT(Parse(bytes).status().ToString(),
                HasSubstr("kv_count 1152921504606846976 at byte 16 cannot fit"));
    const uint64_t tensor_count = ~uint64_t{0};
    std::memcpy(bytes.data() + 8, &tensor_count, 8);
    std::memset(bytes.data() + 16, 0, 8);  // kv_count 0
    EXPECT_THAT(Parse(bytes).status().ToString(), HasSubstr("tensor_count"));
  }
  {
    // Arrays nested 100 deep would recurse 100 frames; the parser stops at 8.
    GgufBuilder b;
    testing::ByteWriter w;
    for (int i = 0; i < 100; ++i) {
      w.Put<uint32_t>(9);
      w.Put<uint64_t>(1);
    }
    w.Put<uint32_t>(0);
    w.Put<uint64_t>(0);
    b.AddRaw("deep", 9, w.bytes());
    EXPECT_THAT(Parse(b.Build()).status().ToString(), HasSubstr("nests arrays deeper than 8"));
  }
}

TEST(GgufTest, RejectsBadValueTypesAndDuplicates) {
  GgufBuilder b;
  b.AddRaw("odd", 13, {0, 0, 0, 0});
  EXPECT_THAT(Parse(b.Build()).status().ToString(),
              HasSubstr("metadata key 0 ('odd') has unknown value type 13 at byte"));
  GgufBuilder b2;
  b2.AddRaw("flag", 7, {2});
  EXPECT_THAT(Parse(b2.Build()).status().ToString(), HasSubstr("is a bool with value 2"));
  GgufBuilder b3;
  b3.AddU32("k", 1);
  b3.AddU32("k", 2);
  EXPECT_THAT(Parse(b3.Build()).status().ToString(), HasSubstr("('k') at byte 41 is a duplicate"));
  GgufBuilder b4;
  b4.AddU32("general.alignment", 12);
  EXPECT_THAT(Parse(b4.Build()).status().ToString(),
              HasSubstr("general.alignment must be an integer power of two"));
}

// A GGML type kvshare does not read is refused by its GGML name and the tensor's name.
TEST(GgufTest, RefusesAnUnsupportedGgmlTypeByName) {
  GgufBuilder b;
  b.tensors.push_back({"blk.3.ffn_down.weight", {256, 2}, 23, std::vector<uint8_t>(272, 0), {}});
  const std::string message = Parse(b.Build()).status().ToString();
  EXPECT_THAT(message, HasSubstr("tensor info 0 ('blk.3.ffn_down.weight')"));
  EXPECT_THAT(message, HasSubstr("tensor type IQ4_XS (23) is not supported (supported: F32=0"));
  EXPECT_THAT(message, HasSubstr("Q4_K=12"));
}

TEST(GgufTest, RejectsBadTensorInfos) {
  auto with_tensor = [](GgufBuilder::TensorEntry t) {
    GgufBuilder b;
    b.tensors.push_back(std::move(t));
    return b.Build();
  };
  std::vector<uint8_t> data = F32Bytes(std::vector<float>(64, 0.f));
  // Unknown GGML type: the DTypeFromGgml message plus the tensor's name.
  absl::Status st = Parse(with_tensor({"blk.0.attn_q.weight", {32, 2}, 99, data, {}})).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.ToString(), HasSubstr("tensor info 0 ('blk.0.attn_q.weight')"));
  EXPECT_THAT(st.ToString(), HasSubstr("tensor type 99 is not supported"));
  // Too many dims, a zero dim, columns not a multiple of the block.
  EXPECT_THAT(Parse(with_tensor({"t", {2, 2, 2, 2, 4}, 0, data, {}})).status().ToString(),
              HasSubstr("has n_dims 5"));
  EXPECT_THAT(Parse(with_tensor({"t", {64, 0}, 0, data, {}})).status().ToString(),
              HasSubstr("dim 1 is 0"));
  EXPECT_THAT(Parse(with_tensor({"t", {16, 4}, 8, data, {}})).status().ToString(),
              HasSubstr("has 16 columns, not a multiple of the Q8_0 block size 32"));
  // Element count overflowing int64.
  EXPECT_THAT(Parse(with_tensor({"t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, data, {}}))
                  .status()
                  .ToString(),
              HasSubstr("must fit in int64"));
  // Misaligned and out-of-range offsets.
  st = Parse(with_tensor({"w", {32, 2}, 0, data, uint64_t{4}})).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.ToString(),
              HasSubstr("tensor 'w' offset 4 is not a multiple of the alignment 32"));
  std::vector<uint8_t> bytes = with_tensor({"w", {32, 2}, 0, data, uint64_t{1} << 20});
  st = Parse(bytes).status();
  EXPECT_TRUE(absl::IsDataLoss(st));
  const uint64_t begin = 96 + (uint64_t{1} << 20);  // data section starts at 96
  EXPECT_EQ(st.message(), "GGUF: tensor 'w' data [" + std::to_string(begin) + ", " +
                              std::to_string(begin + 256) + ") is outside the file (size " +
                              std::to_string(bytes.size()) + ")");
  // An offset near 2^64 must not wrap around into the file.
  EXPECT_THAT(Parse(with_tensor({"w", {32, 2}, 0, data, ~uint64_t{31}})).status().ToString(),
              HasSubstr("is outside the file"));
  // Duplicate tensor names.
  GgufBuilder b;
  b.AddTensor("w", {32, 2}, 0, data);
  b.AddTensor("w", {32, 2}, 0, data);
  EXPECT_THAT(Parse(b.Build()).status().ToString(), HasSubstr("repeats the name"));
}

}  // namespace
}  // namespace kvshare
