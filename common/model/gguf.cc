#include "common/model/gguf.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "GGUF fields are read with memcpy, which assumes a little-endian host");

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// The spec caps tensor names at 64 bytes and keys at 65535.
constexpr uint64_t kMaxTensorNameBytes = 64;
constexpr uint64_t kMaxKeyBytes = 65535;
// Nested arrays recurse; a crafted file could nest millions deep and overflow the stack.
constexpr int kMaxArrayDepth = 8;
// Every array element becomes a GgufValue (~48 bytes), so a corrupt count that still fits in
// the file could otherwise cost gigabytes. Real tokenizers stay below ~300k entries.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 22;

// Reads little-endian fields from a bounded buffer. Every read checks the bytes left first;
// callers build the error message (with context) only when a read fails.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  bool Read(T* out) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadBytes(uint64_t n, std::string* out) {
    if (remaining() < n) return false;
    out->assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

absl::Status Truncated(const Cursor& c, size_t need, absl::string_view what) {
  return absl::DataLossError(
      absl::StrFormat("GGUF: truncated at byte %d while reading %s (need %d bytes, %d left)",
                      c.pos(), what, need, c.remaining()));
}

const char* TypeName(GgufType t) {
  switch (t) {
    case GgufType::kU8:
      return "U8";
    case GgufType::kI8:
      return "I8";
    case GgufType::kU16:
      return "U16";
    case GgufType::kI16:
      return "I16";
    case GgufType::kU32:
      return "U32";
    case GgufType::kI32:
      return "I32";
    case GgufType::kF32:
      return "F32";
    case GgufType::kBool:
      return "BOOL";
    case GgufType::kString:
      return "STRING";
    case GgufType::kArray:
      return "ARRAY";
    case GgufType::kU64:
      return "U64";
    case GgufType::kI64:
      return "I64";
    case GgufType::kF64:
      return "F64";
  }
  return "?";
}

bool IsValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

bool IsIntegerType(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

// The fewest bytes one value of type `t` can occupy; bounds an array's count by the bytes
// left before anything is allocated.
uint64_t MinEncodedBytes(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
      return 8;  // the length
    case GgufType::kArray:
      return 12;  // element type + count
  }
  return 1;
}

// Parses the metadata section and the tensor table. `Describe` functions build context for
// error messages lazily, so the 100k-element tokenizer arrays cost no string formatting.
class Parser {
 public:
  Parser(const uint8_t* data, size_t size) : c_(data, size), size_(size) {}

  absl::Status ParseInto(uint32_t* version, uint64_t* alignment, uint64_t* data_offset,
                         std::map<std::string, GgufValue>* metadata,
                         std::vector<GgufTensorInfo>* tensors);

 private:
  // Reads a GGUF string (u64 length + bytes). `what` names the field for errors.
  template <typename DescribeFn>
  absl::Status ReadString(std::string* out, uint64_t max_len, DescribeFn describe);
  absl::Status ReadValue(GgufType type, int depth, GgufValue* out);
  // Reads `count` elements of type `type` of an array at `depth`, handing each to
  // take(index, GgufValue&).
  template <typename TakeFn>
  absl::Status ReadElements(GgufType type, int depth, uint64_t count, TakeFn take) {
    GgufValue e;
    for (uint64_t i = 0; i < count; ++i) {
      element_index_ = i;
      absl::Status st = ReadValue(type, depth + 1, &e);
      if (!st.ok()) return st;
      take(i, e);
    }
    return absl::OkStatus();
  }
  std::string KvContext() const {
    return absl::StrFormat("metadata key %d ('%s')", kv_index_, *key_);
  }

  Cursor c_;
  size_t size_;
  // Context for messages while reading metadata values.
  uint64_t kv_index_ = 0;
  const std::string* key_ = nullptr;
  uint64_t element_index_ = 0;
  bool in_array_ = false;
};

template <typename DescribeFn>
absl::Status Parser::ReadString(std::string* out, uint64_t max_len, DescribeFn describe) {
  const size_t start = c_.pos();
  uint64_t len = 0;
  if (!c_.Read(&len)) return Truncated(c_, 8, absl::StrCat(describe(), " string length"));
  if (len > c_.remaining()) {
    return absl::DataLossError(absl::StrFormat(
        "GGUF: %s string length %u at byte %d exceeds the %d bytes left in the file", describe(),
        len, start, c_.remaining()));
  }
  if (len > max_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF: %s string length %u at byte %d exceeds the limit of %u", describe(),
                        len, start, max_len));
  }
  c_.ReadBytes(len, out);  // cannot fail: checked above
  return absl::OkStatus();
}

absl::Status Parser::ReadValue(GgufType type, int depth, GgufValue* out) {
  out->type = type;
  auto describe = [&] {
    return in_array_ ? absl::StrFormat("%s element %d", KvContext(), element_index_)
                     : absl::StrCat(KvContext(), " value");
  };
  auto scalar = [&](auto tag, auto widen) -> absl::Status {
    decltype(tag) v;
    if (!c_.Read(&v)) return Truncated(c_, sizeof(v), describe());
    out->value = widen(v);
    return absl::OkStatus();
  };
  auto as_i64 = [](auto v) { return static_cast<int64_t>(v); };
  auto as_f64 = [](auto v) { return static_cast<double>(v); };
  switch (type) {
    case GgufType::kU8:
      return scalar(uint8_t{}, as_i64);
    case GgufType::kI8:
      return scalar(int8_t{}, as_i64);
    case GgufType::kU16:
      return scalar(uint16_t{}, as_i64);
    case GgufType::kI16:
      return scalar(int16_t{}, as_i64);
    case GgufType::kU32:
      return scalar(uint32_t{}, as_i64);
    case GgufType::kI32:
      return scalar(int32_t{}, as_i64);
    case GgufType::kI64:
      return scalar(int64_t{}, as_i64);
    case GgufType::kU64:
      return scalar(uint64_t{}, [](uint64_t v) { return v; });
    case GgufType::kF32:
      return scalar(float{}, as_f64);
    case GgufType::kF64:
      return scalar(double{}, as_f64);
    case GgufType::kBool: {
      const size_t at = c_.pos();
      uint8_t b = 0;
      if (!c_.Read(&b)) return Truncated(c_, 1, describe());
      if (b > 1) {
        return absl::InvalidArgumentError(
            absl::StrFormat("GGUF: %s at byte %d is a bool with value %d", describe(), at, b));
      }
      out->value = b == 1;
      return absl::OkStatus();
    }
    case GgufType::kString: {
      std::string s;
      absl::Status st = ReadString(&s, std::numeric_limits<uint64_t>::max(), describe);
      if (!st.ok()) return st;
      out->value = std::move(s);
      return absl::OkStatus();
    }
    case GgufType::kArray: {
      const size_t at = c_.pos();
      if (depth >= kMaxArrayDepth) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "GGUF: %s at byte %d nests arrays deeper than %d", describe(), at, kMaxArrayDepth));
      }
      uint32_t elem_type = 0;
      uint64_t count = 0;
      if (!c_.Read(&elem_type)) return Truncated(c_, 4, describe() + " array type");
      if (!IsValidType(elem_type)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "GGUF: %s at byte %d is an array of unknown value type %u", describe(), at, elem_type));
      }
      if (!c_.Read(&count)) return Truncated(c_, 8, describe() + " array length");
      const GgufType et = static_cast<GgufType>(elem_type);
      const uint64_t min_bytes = MinEncodedBytes(et);
      if (count > c_.remaining() / min_bytes) {
        return absl::DataLossError(absl::StrFormat(
            "GGUF: %s at byte %d: array of %u %s elements needs at least %u bytes per element "
            "but only %d bytes are left in the file",
            describe(), at, count, TypeName(et), min_bytes, c_.remaining()));
      }
      if (count > kMaxArrayElements) {
        return absl::InvalidArgumentError(
            absl::StrFormat("GGUF: %s at byte %d: array of %u elements exceeds the limit of %u",
                            describe(), at, count, kMaxArrayElements));
      }
      out->array_type = et;
      const bool outer_in_array = in_array_;
      const uint64_t outer_index = element_index_;
      in_array_ = true;
      absl::Status st;
      if (IsIntegerType(et) && et != GgufType::kU64) {
        std::vector<int64_t> elems(count);
        st = ReadElements(et, depth, count, [&](uint64_t i, const GgufValue& e) {
          elems[i] = std::get<int64_t>(e.value);
        });
        out->value = std::move(elems);
      } else if (et == GgufType::kF32 || et == GgufType::kF64) {
        std::vector<double> elems(count);
        st = ReadElements(et, depth, count, [&](uint64_t i, const GgufValue& e) {
          elems[i] = std::get<double>(e.value);
        });
        out->value = std::move(elems);
      } else {
        std::vector<GgufValue> elems(count);
        st = ReadElements(et, depth, count,
                          [&](uint64_t i, GgufValue& e) { elems[i] = std::move(e); });
        out->value = std::move(elems);
      }
      if (!st.ok()) return st;
      in_array_ = outer_in_array;
      element_index_ = outer_index;
      return absl::OkStatus();
    }
  }
  // Unreachable: callers validate the type id first.
  return absl::InternalError("GGUF: unhandled value type");
}

absl::Status Parser::ParseInto(uint32_t* version, uint64_t* alignment, uint64_t* data_offset,
                               std::map<std::string, GgufValue>* metadata,
                               std::vector<GgufTensorInfo>* tensors) {
  uint32_t magic = 0;
  if (!c_.Read(&magic)) return Truncated(c_, 4, "the magic");
  if (std::memcmp(&magic, "GGUF", 4) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF: bad magic 0x%08x at byte 0 (expected 'GGUF')", magic));
  }
  if (!c_.Read(version)) return Truncated(c_, 4, "the version");
  if (*version != 2 && *version != 3) {
    // v1 used 32-bit counts and lengths; a byte-swapped version means a big-endian file.
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF: version %u at byte 4 is not supported (expected 2 or 3%s)", *version,
                        (*version & 0xffff) == 0 ? "; this looks like a big-endian file" : ""));
  }
  uint64_t tensor_count = 0, kv_count = 0;
  if (!c_.Read(&tensor_count)) return Truncated(c_, 8, "tensor_count");
  if (!c_.Read(&kv_count)) return Truncated(c_, 8, "kv_count");
  // A key/value pair takes at least 13 bytes (key length, type, 1-byte value) and a tensor
  // info at least 24 (name length, n_dims, type, offset): reject counts the file cannot hold
  // before reserving anything.
  if (kv_count > c_.remaining() / 13) {
    return absl::DataLossError(
        absl::StrFormat("GGUF: kv_count %u at byte 16 cannot fit in the %d bytes left in the file",
                        kv_count, c_.remaining()));
  }
  if (tensor_count > c_.remaining() / 24) {
    return absl::DataLossError(absl::StrFormat(
        "GGUF: tensor_count %u at byte 8 cannot fit in the %d bytes left in the file", tensor_count,
        c_.remaining()));
  }

  for (uint64_t i = 0; i < kv_count; ++i) {
    kv_index_ = i;
    const size_t key_at = c_.pos();
    std::string key;
    absl::Status st =
        ReadString(&key, kMaxKeyBytes, [&] { return absl::StrFormat("metadata key %d", i); });
    if (!st.ok()) return st;
    if (metadata->count(key) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF: metadata key %d ('%s') at byte %d is a duplicate", i, key, key_at));
    }
    key_ = &key;
    in_array_ = false;
    const size_t type_at = c_.pos();
    uint32_t type = 0;
    if (!c_.Read(&type)) return Truncated(c_, 4, KvContext() + " value type");
    if (!IsValidType(type)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF: %s has unknown value type %u at byte %d", KvContext(), type, type_at));
    }
    GgufValue value;
    st = ReadValue(static_cast<GgufType>(type), 0, &value);
    if (!st.ok()) return st;
    key_ = nullptr;
    metadata->emplace(std::move(key), std::move(value));
  }

  *alignment = 32;
  if (auto it = metadata->find("general.alignment"); it != metadata->end()) {
    const GgufValue& v = it->second;
    const int64_t* a = std::get_if<int64_t>(&v.value);
    // The spec asks for a multiple of 8; a power of two keeps aligning cheap and lets F32
    // tensors be read in place.
    if (a == nullptr || *a < 8 || *a > (int64_t{1} << 30) || (*a & (*a - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF: general.alignment must be an integer power of two in [8, 2^30]%s",
          a ? absl::StrFormat(", got %d", *a) : absl::StrCat(", got type ", TypeName(v.type))));
    }
    *alignment = static_cast<uint64_t>(*a);
  }

  tensors->resize(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo& t = (*tensors)[i];
    absl::Status st = ReadString(&t.name, kMaxTensorNameBytes,
                                 [&] { return absl::StrFormat("tensor info %d name", i); });
    if (!st.ok()) return st;
    auto ctx = [&] { return absl::StrFormat("tensor info %d ('%s')", i, t.name); };
    if (t.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: tensor info %d at byte %d has an empty name", i, c_.pos() - 8));
    }
    const size_t ndims_at = c_.pos();
    uint32_t n_dims = 0;
    if (!c_.Read(&n_dims)) return Truncated(c_, 4, ctx() + " n_dims");
    if (n_dims < 1 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: %s has n_dims %u at byte %d (expected 1 to %d)", ctx(), n_dims,
                          ndims_at, kMaxDims));
    }
    const size_t dims_at = c_.pos();
    uint64_t elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      if (!c_.Read(&dim)) return Truncated(c_, 8, ctx() + " dims");
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(elems, dim, &elems) ||
          elems > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "GGUF: %s dim %d is %u at byte %d (each dim must be >= 1 and the element count "
            "must fit in int64)",
            ctx(), d, dim, dims_at + 8 * d));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const size_t type_at = c_.pos();
    uint32_t ggml_type = 0;
    if (!c_.Read(&ggml_type)) return Truncated(c_, 4, ctx() + " type");
    absl::StatusOr<DType> dtype = DTypeFromGgml(ggml_type);
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: %s at byte %d: %s", ctx(), type_at, dtype.status().message()));
    }
    t.type = *dtype;
    if (!c_.Read(&t.offset)) return Truncated(c_, 8, ctx() + " offset");
    const int block = GetDTypeInfo(t.type).block_elems;
    if (t.shape[0] % block != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: %s has %d columns, not a multiple of the %s block size %d", ctx(),
                          t.shape[0], GetDTypeInfo(t.type).name, block));
    }
    // elems < 2^63, so blocks * block_bytes (<= 2^63 / 32 * 34 for Q8_0) fits in uint64.
    t.nbytes = elems / block * static_cast<uint64_t>(GetDTypeInfo(t.type).block_bytes);
  }

  // The data section starts at the next multiple of the alignment after the tensor table.
  const uint64_t table_end = c_.pos();
  *data_offset = (table_end + *alignment - 1) / *alignment * *alignment;

  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < tensors->size(); ++i) {
    GgufTensorInfo& t = (*tensors)[i];
    if (!seen.emplace(t.name, i).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: tensor info %d ('%s') repeats the name of tensor info %d", i,
                          t.name, seen[t.name]));
    }
    const uint64_t relative = t.offset;
    if (relative % *alignment != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: tensor '%s' offset %u is not a multiple of the alignment %u",
                          t.name, relative, *alignment));
    }
    // 128-bit sums: a corrupt offset near 2^64 must not wrap around into the file.
    const absl::uint128 begin = absl::uint128(*data_offset) + relative;
    const absl::uint128 end = begin + t.nbytes;
    if (end > size_) {
      return absl::DataLossError(
          absl::StrFormat("GGUF: tensor '%s' data [%d, %d) is outside the file (size %d)", t.name,
                          begin, end, size_));
    }
    t.offset = static_cast<uint64_t>(begin);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GgufFile> GgufFile::Parse(const uint8_t* data, size_t size) {
  GgufFile file;
  Parser parser(data, size);
  absl::Status st = parser.ParseInto(&file.version_, &file.alignment_, &file.data_offset_,
                                     &file.metadata_, &file.tensors_);
  if (!st.ok()) return st;
  for (size_t i = 0; i < file.tensors_.size(); ++i) {
    file.tensor_index_.emplace(file.tensors_[i].name, i);
  }
  return file;
}

const GgufTensorInfo* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

absl::Status NotFound(const std::string& key) {
  return absl::NotFoundError(absl::StrCat("GGUF: metadata key '", key, "' is missing"));
}

absl::Status WrongType(const std::string& key, const GgufValue& v, const char* expected) {
  std::string got = TypeName(v.type);
  if (v.type == GgufType::kArray) absl::StrAppend(&got, " of ", TypeName(v.array_type));
  return absl::InvalidArgumentError(
      absl::StrFormat("GGUF: metadata key '%s' has type %s, expected %s", key, got, expected));
}

absl::StatusOr<int64_t> AsInt(const std::string& key, const GgufValue& v) {
  if (const int64_t* i = std::get_if<int64_t>(&v.value)) return *i;
  if (const uint64_t* u = std::get_if<uint64_t>(&v.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF: metadata key '%s' value %u does not fit in int64", key, *u));
    }
    return static_cast<int64_t>(*u);
  }
  return WrongType(key, v, "an integer");
}

absl::StatusOr<double> AsFloat(const std::string& key, const GgufValue& v) {
  if (const double* d = std::get_if<double>(&v.value)) return *d;
  if (const int64_t* i = std::get_if<int64_t>(&v.value)) return static_cast<double>(*i);
  if (const uint64_t* u = std::get_if<uint64_t>(&v.value)) return static_cast<double>(*u);
  return WrongType(key, v, "a number");
}

}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  return AsInt(key, *v);
}

absl::StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  return AsFloat(key, *v);
}

absl::StatusOr<bool> GgufFile::GetBool(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (const bool* b = std::get_if<bool>(&v->value)) return *b;
  return WrongType(key, *v, "BOOL");
}

absl::StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (const std::string* s = std::get_if<std::string>(&v->value)) return *s;
  return WrongType(key, *v, "STRING");
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  const auto* elems = std::get_if<std::vector<GgufValue>>(&v->value);
  if (elems == nullptr || v->array_type != GgufType::kString) {
    return WrongType(key, *v, "ARRAY of STRING");
  }
  std::vector<std::string> out;
  out.reserve(elems->size());
  for (const GgufValue& e : *elems) out.push_back(std::get<std::string>(e.value));
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (const auto* d = std::get_if<std::vector<double>>(&v->value)) return *d;
  if (const auto* i = std::get_if<std::vector<int64_t>>(&v->value)) {
    return std::vector<double>(i->begin(), i->end());
  }
  const auto* elems = std::get_if<std::vector<GgufValue>>(&v->value);
  if (elems == nullptr || v->array_type != GgufType::kU64) {
    return WrongType(key, *v, "ARRAY of numbers");
  }
  std::vector<double> out;
  out.reserve(elems->size());
  for (const GgufValue& e : *elems) {
    absl::StatusOr<double> d = AsFloat(key, e);
    if (!d.ok()) return d.status();
    out.push_back(*d);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound(key);
  if (const auto* i = std::get_if<std::vector<int64_t>>(&v->value)) return *i;
  const auto* elems = std::get_if<std::vector<GgufValue>>(&v->value);
  if (elems == nullptr || v->array_type != GgufType::kU64) {
    return WrongType(key, *v, "ARRAY of integers");
  }
  std::vector<int64_t> out;
  out.reserve(elems->size());
  for (const GgufValue& e : *elems) {
    absl::StatusOr<int64_t> i = AsInt(key, e);
    if (!i.ok()) return i.status();
    out.push_back(*i);
  }
  return out;
}

Tensor GgufFile::TensorView(const GgufTensorInfo& info, const uint8_t* file_data) const {
  Tensor t;
  t.name = info.name;
  t.type = info.type;
  t.shape = info.shape;
  t.data = file_data + info.offset;
  t.nbytes = info.nbytes;
  return t;
}

}  // namespace kvshare
