// Writes small GGUF files for tests: any metadata (including malformed values written raw),
// any tensor table (offsets computed, or forced to test bad ones), and a llama GGUF holding
// the weights of an already loaded Model (e.g. stories260K converted to GGUF).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/model/model.h"
#include "common/model/model_layout.h"

namespace kvshare::testing {

// Little-endian byte sink.
class ByteWriter {
 public:
  template <typename T>
  void Put(T v) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &v, sizeof(T));
  }
  void Str(const std::string& s) {
    Put<uint64_t>(s.size());
    Raw(s.data(), s.size());
  }
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  void PadTo(uint64_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back(0);
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class GgufBuilder {
 public:
  struct TensorEntry {
    std::string name;
    std::vector<uint64_t> dims;  // GGML order
    uint32_t type = 0;           // GGML type id, written as is
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;  // relative offset to write instead of the computed one
  };

  uint32_t version = 3;
  uint64_t alignment = 32;  // layout only; call AddU32("general.alignment", ...) to declare it
  std::vector<TensorEntry> tensors;

  // `payload` is the encoded value after its type id.
  void AddRaw(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
    ByteWriter w;
    w.Str(key);
    w.Put<uint32_t>(type);
    w.Raw(payload.data(), payload.size());
    kvs_.push_back(std::move(w.bytes()));
  }
  void AddU32(const std::string& key, uint32_t v) { AddScalar(key, 4, v); }
  void AddI32(const std::string& key, int32_t v) { AddScalar(key, 5, v); }
  void AddF32(const std::string& key, float v) { AddScalar(key, 6, v); }
  void AddBool(const std::string& key, bool v) { AddScalar<uint8_t>(key, 7, v ? 1 : 0); }
  void AddU64(const std::string& key, uint64_t v) { AddScalar(key, 10, v); }
  void AddString(const std::string& key, const std::string& v) {
    ByteWriter w;
    w.Str(v);
    AddRaw(key, 8, w.bytes());
  }
  void AddStringArray(const std::string& key, const std::vector<std::string>& v) {
    ByteWriter w;
    w.Put<uint32_t>(8);
    w.Put<uint64_t>(v.size());
    for (const std::string& s : v) w.Str(s);
    AddRaw(key, 9, w.bytes());
  }
  void AddTensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                 std::vector<uint8_t> data) {
    tensors.push_back({name, std::move(dims), type, std::move(data), std::nullopt});
  }

  std::vector<uint8_t> Build() const {
    ByteWriter w;
    w.Raw("GGUF", 4);
    w.Put<uint32_t>(version);
    w.Put<uint64_t>(tensors.size());
    w.Put<uint64_t>(kvs_.size());
    for (const auto& kv : kvs_) w.Raw(kv.data(), kv.size());
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const TensorEntry& t : tensors) {
      offsets.push_back(next);
      next = (next + t.data.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorEntry& t = tensors[i];
      w.Str(t.name);
      w.Put<uint32_t>(t.dims.size());
      for (uint64_t d : t.dims) w.Put<uint64_t>(d);
      w.Put<uint32_t>(t.type);
      w.Put<uint64_t>(t.offset.value_or(offsets[i]));
    }
    w.PadTo(alignment);
    const size_t data_start = w.bytes().size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      w.bytes().resize(data_start + offsets[i]);
      w.Raw(tensors[i].data.data(), tensors[i].data.size());
    }
    return std::move(w.bytes());
  }

 private:
  template <typename T>
  void AddScalar(const std::string& key, uint32_t type, T v) {
    ByteWriter w;
    w.Put<T>(v);
    AddRaw(key, type, w.bytes());
  }

  std::vector<std::vector<uint8_t>> kvs_;
};

// A llama GGUF with the given config and weights (same types and bytes), tensors in canonical
// order, output.weight omitted when tied. Tests edit the result before Build().
inline GgufBuilder LlamaGgufFromModel(const ModelConfig& c, const ModelWeights& weights) {
  GgufBuilder b;
  b.AddString("general.architecture", "llama");
  b.AddString("general.name", c.name);
  b.AddU32("llama.block_count", c.n_layers);
  b.AddU32("llama.context_length", c.max_seq_len);
  b.AddU32("llama.embedding_length", c.dim);
  b.AddU32("llama.feed_forward_length", c.hidden_dim);
  b.AddU32("llama.attention.head_count", c.n_heads);
  b.AddU32("llama.attention.head_count_kv", c.n_kv_heads);
  b.AddF32("llama.rope.freq_base", c.rope_theta);
  b.AddF32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  b.AddU32("llama.vocab_size", c.vocab_size);
  const std::vector<TensorSpec> specs = CanonicalTensorSpecs(c);
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& t = CanonicalTensor(weights, i);
    const auto* p = static_cast<const uint8_t*>(t.data);
    b.AddTensor(specs[i].name + ".weight", std::vector<uint64_t>(t.shape.begin(), t.shape.end()),
                static_cast<uint32_t>(t.type), std::vector<uint8_t>(p, p + t.nbytes));
  }
  return b;
}
inline GgufBuilder LlamaGgufFromModel(const Model& m) {
  return LlamaGgufFromModel(m.config(), m.weights());
}

}  // namespace kvshare::testing
