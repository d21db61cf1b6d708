#include "common/model/fingerprint.h"

#include <openssl/evp.h>

#include <cstring>
#include <memory>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "common/model/model_layout.h"

namespace kvshare {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the serialisation writes integers with memcpy, which assumes little-endian");

// Feeds the canonical serialisation to one SHA-256 context. Tensor bytes are hashed in place
// (one pass over the mapping, no copies); only the small framing fields are buffered.
class CanonicalHasher {
 public:
  CanonicalHasher() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    ok_ = ctx_ != nullptr && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1;
  }

  template <typename T>
  void Scalar(T v) {
    Bytes(&v, sizeof(v));
  }
  void Str(const std::string& s) {
    Scalar<uint64_t>(s.size());
    Bytes(s.data(), s.size());
  }
  void Bytes(const void* p, size_t n) {
    if (ok_ && n > 0) ok_ = EVP_DigestUpdate(ctx_.get(), p, n) == 1;
  }

  absl::StatusOr<std::string> HexDigest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!ok_ || EVP_DigestFinal_ex(ctx_.get(), digest, &len) != 1) {
      return absl::InternalError("fingerprint: OpenSSL SHA-256 failed");
    }
    return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), len));
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
  bool ok_ = false;
};

uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// The value encoding of the v2 serialisation (fingerprint.h).
void HashGgufValue(CanonicalHasher& h, const GgufValue& v) {
  h.Scalar<uint32_t>(static_cast<uint32_t>(v.type));
  if (const int64_t* i = std::get_if<int64_t>(&v.value)) {
    h.Scalar<int64_t>(*i);
  } else if (const uint64_t* u = std::get_if<uint64_t>(&v.value)) {
    h.Scalar<uint64_t>(*u);
  } else if (const double* d = std::get_if<double>(&v.value)) {
    uint64_t bits;
    std::memcpy(&bits, d, sizeof(bits));
    h.Scalar<uint64_t>(bits);
  } else if (const bool* b = std::get_if<bool>(&v.value)) {
    h.Scalar<uint8_t>(*b ? 1 : 0);
  } else if (const std::string* s = std::get_if<std::string>(&v.value)) {
    h.Str(*s);
  } else if (const auto* a = std::get_if<std::vector<GgufValue>>(&v.value)) {
    h.Scalar<uint32_t>(static_cast<uint32_t>(v.array_type));
    h.Scalar<uint64_t>(a->size());
    for (const GgufValue& e : *a) HashGgufValue(h, e);
  } else if (const auto* ints = std::get_if<std::vector<int64_t>>(&v.value)) {
    // Each element as the scalar GgufValue it widens from would hash.
    h.Scalar<uint32_t>(static_cast<uint32_t>(v.array_type));
    h.Scalar<uint64_t>(ints->size());
    for (int64_t e : *ints) {
      h.Scalar<uint32_t>(static_cast<uint32_t>(v.array_type));
      h.Scalar<int64_t>(e);
    }
  } else if (const auto* floats = std::get_if<std::vector<double>>(&v.value)) {
    h.Scalar<uint32_t>(static_cast<uint32_t>(v.array_type));
    h.Scalar<uint64_t>(floats->size());
    for (double e : *floats) {
      uint64_t bits;
      std::memcpy(&bits, &e, sizeof(bits));
      h.Scalar<uint32_t>(static_cast<uint32_t>(v.array_type));
      h.Scalar<uint64_t>(bits);
    }
  }
}

}  // namespace

absl::StatusOr<std::string> ComputeModelFingerprintV2(const std::string& fingerprint_v1,
                                                      const FingerprintedTokenizer& tokenizer) {
  CanonicalHasher h;
  h.Str("kvshare-model-fingerprint-v2");
  h.Str(fingerprint_v1);
  if (tokenizer.gguf != nullptr) {
    h.Scalar<uint8_t>(1);
    const std::string prefix = "tokenizer.";
    const auto& metadata = tokenizer.gguf->metadata();  // a std::map: keys in byte order
    uint64_t count = 0;
    for (const auto& [key, value] : metadata) count += key.rfind(prefix, 0) == 0 ? 1 : 0;
    h.Scalar<uint64_t>(count);
    for (const auto& [key, value] : metadata) {
      if (key.rfind(prefix, 0) != 0) continue;
      h.Str(key);
      HashGgufValue(h, value);
    }
  } else if (tokenizer.llama2c_file.has_value()) {
    h.Scalar<uint8_t>(2);
    h.Str(*tokenizer.llama2c_file);
  } else {
    h.Scalar<uint8_t>(0);
  }
  return h.HexDigest();
}

absl::StatusOr<std::string> ComputeModelFingerprintV1(const ModelConfig& c, const ModelWeights& w) {
  CanonicalHasher h;
  h.Str("kvshare-model-fingerprint-v1");
  h.Str(c.architecture);
  for (int64_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                    c.vocab_size, c.max_seq_len}) {
    h.Scalar<int64_t>(v);
  }
  h.Scalar<uint32_t>(FloatBits(c.rope_theta));
  h.Scalar<uint32_t>(FloatBits(c.norm_eps));
  h.Scalar<uint8_t>(c.tied_output ? 1 : 0);
  if (c.IsGemma3()) {  // only there, so Llama fingerprints are unchanged
    h.Scalar<int64_t>(c.sliding_window);
    h.Str(std::string(c.local_layer.begin(), c.local_layer.end()));
    for (float f : {c.rope_theta_local, c.embedding_scale, c.attention_scale}) {
      h.Scalar<uint32_t>(FloatBits(f));
    }
  }
  const std::vector<TensorSpec> specs = CanonicalTensorSpecs(c);
  h.Scalar<uint64_t>(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& t = CanonicalTensor(w, i);
    h.Str(specs[i].name);
    h.Scalar<uint32_t>(static_cast<uint32_t>(t.type));
    h.Scalar<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) h.Scalar<int64_t>(d);
    h.Scalar<uint64_t>(t.nbytes);
    h.Bytes(t.data, t.nbytes);
  }
  return h.HexDigest();
}

}  // namespace kvshare
