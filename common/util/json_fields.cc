#include "common/util/json_fields.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/util/excerpt.h"

namespace kvshare {
namespace {

using json = nlohmann::json;

// The deepest nesting of arrays and objects in `text`, counted outside strings, stopping once
// past `limit` (nlohmann's parser and destructor recurse per level).
int NestingDepth(absl::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// Reads an integer JSON value as int64/uint64 without conversion; false for anything else
// (floats included: 3.0 is not an integer field's value).
bool ReadInteger(const json& v, bool* negative, uint64_t* magnitude) {
  if (v.is_number_unsigned()) {
    *negative = false;
    *magnitude = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    *negative = i < 0;
    *magnitude = i < 0 ? uint64_t(0) - static_cast<uint64_t>(i) : static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

bool InRange(bool negative, uint64_t magnitude, int64_t min, int64_t max) {
  if (negative) {
    if (min >= 0) return false;
    // -magnitude in [min, max]: magnitude <= -min, and magnitude >= -max when max < 0.
    const uint64_t most = uint64_t(0) - static_cast<uint64_t>(min);
    const uint64_t least = max < 0 ? uint64_t(0) - static_cast<uint64_t>(max) : 0;
    return magnitude <= most && magnitude >= least;
  }
  return max >= 0 && magnitude <= static_cast<uint64_t>(max) &&
         (min <= 0 || magnitude >= static_cast<uint64_t>(min));
}

}  // namespace

absl::StatusOr<json> ParseJsonObject(absl::string_view text, absl::string_view where) {
  if (NestingDepth(text, kMaxJsonDepth) > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: JSON nests deeper than %d levels (the limit)", where, kMaxJsonDepth));
  }
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a JSON object (the text does not parse as JSON)", where));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a JSON object (the document is %s)", where, DescribeJsonValue(j)));
  }
  return j;
}

std::string DescribeJsonValue(const json& v) {
  std::string shown;
  if (v.is_string()) {
    shown = absl::StrCat("\"", Excerpt(v.get_ref<const std::string&>()), "\"");
  } else if (v.is_array()) {
    shown = absl::StrFormat("an array of %d elements", v.size());
  } else if (v.is_object()) {
    shown = absl::StrFormat("an object of %d fields", v.size());
  } else {
    shown = Excerpt(v.dump());
  }
  return absl::StrCat(shown, " (", v.type_name(), ")");
}

JsonFields::JsonFields(const json& object, std::string where, std::string path)
    : object_(object), where_(std::move(where)), path_(std::move(path)), status_(&own_status_) {}

JsonFields::JsonFields(const json& object, std::string where, std::string path,
                       absl::Status* status)
    : object_(object), where_(std::move(where)), path_(std::move(path)), status_(status) {}

std::string JsonFields::PathOf(absl::string_view key) const {
  if (path_.empty()) return std::string(key);
  if (!key.empty() && key[0] == '[') return absl::StrCat(path_, key);
  return absl::StrCat(path_, ".", key);
}

bool JsonFields::Error(absl::string_view key, const json* value, absl::string_view expectation) {
  if (!status_->ok()) return false;
  const std::string field = Excerpt(PathOf(key));
  *status_ = absl::InvalidArgumentError(
      value == nullptr
          ? absl::StrFormat("%s: field '%s' is missing; expected %s", where_, field, expectation)
          : absl::StrFormat("%s: field '%s' is %s; expected %s", where_, field,
                            DescribeJsonValue(*value), expectation));
  return false;
}

bool JsonFields::Fail(const char* key, absl::string_view expectation) {
  if (!object_.is_object()) return Error(key, nullptr, expectation);
  auto it = object_.find(key);
  return Error(key, it == object_.end() ? nullptr : &*it, expectation);
}

const json* JsonFields::Find(const char* key, Field presence, absl::string_view expectation) {
  if (!status_->ok()) return nullptr;
  if (!object_.is_object()) {
    Error("", &object_, "an object");
    return nullptr;
  }
  auto it = object_.find(key);
  if (it == object_.end() || it->is_null()) {
    if (presence == Field::kRequired) Error(key, it == object_.end() ? nullptr : &*it, expectation);
    return nullptr;
  }
  return &*it;
}

bool JsonFields::String(const char* key, Field presence, size_t max_bytes, std::string* out) {
  const std::string expectation = absl::StrFormat("a string of at most %d bytes", max_bytes);
  const json* v = Find(key, presence, expectation);
  if (v == nullptr) return false;
  if (!v->is_string() || v->get_ref<const std::string&>().size() > max_bytes) {
    return Error(key, v, expectation);
  }
  *out = v->get<std::string>();
  return true;
}

bool JsonFields::Int(const char* key, Field presence, int64_t min, int64_t max, int64_t* out) {
  const std::string expectation = absl::StrFormat("an integer in [%d, %d]", min, max);
  const json* v = Find(key, presence, expectation);
  if (v == nullptr) return false;
  bool negative = false;
  uint64_t magnitude = 0;
  if (!ReadInteger(*v, &negative, &magnitude) || !InRange(negative, magnitude, min, max)) {
    return Error(key, v, expectation);
  }
  *out = v->get<int64_t>();
  return true;
}

bool JsonFields::Int(const char* key, Field presence, int min, int max, int* out) {
  int64_t wide = 0;
  if (!Int(key, presence, int64_t{min}, int64_t{max}, &wide)) return false;
  *out = static_cast<int>(wide);  // in [min, max], so exact
  return true;
}

bool JsonFields::Uint(const char* key, Field presence, uint64_t min, uint64_t max, uint64_t* out) {
  const std::string expectation = absl::StrFormat("an integer in [%d, %d]", min, max);
  const json* v = Find(key, presence, expectation);
  if (v == nullptr) return false;
  bool negative = false;
  uint64_t magnitude = 0;
  if (!ReadInteger(*v, &negative, &magnitude) || negative || magnitude < min || magnitude > max) {
    return Error(key, v, expectation);
  }
  *out = magnitude;
  return true;
}

bool JsonFields::Double(const char* key, Field presence, double min, double max, double* out) {
  const std::string expectation = absl::StrFormat("a number in [%g, %g]", min, max);
  const json* v = Find(key, presence, expectation);
  if (v == nullptr) return false;
  if (!v->is_number()) return Error(key, v, expectation);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < min || d > max) return Error(key, v, expectation);
  *out = d;
  return true;
}

bool JsonFields::Bool(const char* key, Field presence, bool* out) {
  const json* v = Find(key, presence, "true or false");
  if (v == nullptr) return false;
  if (!v->is_boolean()) return Error(key, v, "true or false");
  *out = v->get<bool>();
  return true;
}

bool JsonFields::IntArray(const char* key, Field presence, size_t max_elements, int64_t min,
                          int64_t max, std::vector<int>* out) {
  const json* a = Array(key, presence, max_elements);
  if (a == nullptr) return false;
  std::vector<int> values;
  values.reserve(a->size());  // at most max_elements
  const std::string expectation = absl::StrFormat("an integer in [%d, %d]", min, max);
  for (size_t i = 0; i < a->size(); ++i) {
    const json& v = (*a)[i];
    bool negative = false;
    uint64_t magnitude = 0;
    if (!ReadInteger(v, &negative, &magnitude) || !InRange(negative, magnitude, min, max)) {
      return Error(absl::StrFormat("%s[%d]", key, i), &v, expectation);
    }
    values.push_back(static_cast<int>(v.get<int64_t>()));
  }
  *out = std::move(values);
  return true;
}

const json* JsonFields::Object(const char* key, Field presence) {
  const json* v = Find(key, presence, "an object");
  if (v == nullptr) return nullptr;
  if (!v->is_object()) {
    Error(key, v, "an object");
    return nullptr;
  }
  return v;
}

const json* JsonFields::Array(const char* key, Field presence, size_t max_elements) {
  const std::string expectation = absl::StrFormat("an array of at most %d elements", max_elements);
  const json* v = Find(key, presence, expectation);
  if (v == nullptr) return nullptr;
  if (!v->is_array() || v->size() > max_elements) {
    Error(key, v, expectation);
    return nullptr;
  }
  return v;
}

const json* JsonFields::ObjectAt(const char* key, const json& value) {
  if (!status_->ok()) return nullptr;
  if (!value.is_object()) {
    Error(key, &value, "an object");
    return nullptr;
  }
  return &value;
}

JsonFields JsonFields::Nested(const char* key, const json& object) const {
  return JsonFields(object, where_, PathOf(key), status_);
}

}  // namespace kvshare
