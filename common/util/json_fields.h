// Checked reads of a JSON document. nlohmann::json's get<T>() and value() throw type_error on a
// mismatch (an uncaught one aborts the process) and convert integers silently (get<int>() of
// 4294967297 is 1); every file and record kvshare reads goes through this layer instead. Each
// accessor checks presence, type, range and size; the first failure is kept as an
// InvalidArgument naming the document, the field's path, the value (cut to kMaxEchoBytes) and
// the expectation:
//
//   strategy file s.json: field 'provenance.method' is 3 (number); expected a string of at
//   most 256 bytes
//
// Once one accessor has failed the later ones do nothing and return false, so a reader reads
// all its fields and checks status() once. A reader for a nested object shares its parent's
// status. Never throws. Not thread-safe (one reader per document).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace kvshare {

enum class Field { kOptional, kRequired };

// Parses `text` as a JSON object. InvalidArgument naming `where` when it does not parse, nests
// deeper than kMaxJsonDepth (checked before parsing), or is not an object.
absl::StatusOr<nlohmann::json> ParseJsonObject(absl::string_view text, absl::string_view where);

class JsonFields {
 public:
  // Reads `object` (a JSON object that outlives this reader) found at `path` ("" for the
  // document itself) in the document `where` ("strategy file s.json").
  JsonFields(const nlohmann::json& object, std::string where, std::string path = "");
  JsonFields(const JsonFields&) = delete;
  JsonFields& operator=(const JsonFields&) = delete;

  // Each returns true when the field was read into *out. An absent (or null) optional field
  // returns false and leaves *out unchanged; so does any failure, which status() then holds.
  bool String(const char* key, Field presence, size_t max_bytes, std::string* out);
  bool Int(const char* key, Field presence, int64_t min, int64_t max, int64_t* out);
  bool Int(const char* key, Field presence, int min, int max, int* out);
  bool Uint(const char* key, Field presence, uint64_t min, uint64_t max, uint64_t* out);
  // A finite number (an integer is accepted) in [min, max].
  bool Double(const char* key, Field presence, double min, double max, double* out);
  bool Bool(const char* key, Field presence, bool* out);
  // An array of at most max_elements integers, each in [min, max].
  bool IntArray(const char* key, Field presence, size_t max_elements, int64_t min, int64_t max,
                std::vector<int>* out);
  // A nested object or array; nullptr when absent (optional) or on failure.
  const nlohmann::json* Object(const char* key, Field presence);
  const nlohmann::json* Array(const char* key, Field presence, size_t max_elements);

  // `value` (an element of an array here, at path `key`, e.g. "models[3]") when it is an
  // object; nullptr (and a failure) otherwise.
  const nlohmann::json* ObjectAt(const char* key, const nlohmann::json& value);

  // A reader for the object `object`, found at `key` of this one (see Object()), that reports
  // into this reader's status.
  JsonFields Nested(const char* key, const nlohmann::json& object) const;

  // Records a failure of a check the accessors cannot express: field `key` holds its value,
  // which is not `expectation`. Returns false, so `return f.Fail(...)` reads naturally.
  bool Fail(const char* key, absl::string_view expectation);

  bool ok() const { return status_->ok(); }
  const absl::Status& status() const { return *status_; }
  // "provenance.method": the path of `key` in the document.
  std::string PathOf(absl::string_view key) const;

 private:
  JsonFields(const nlohmann::json& object, std::string where, std::string path,
             absl::Status* status);
  // The field, or nullptr when absent/null (failing when required) or after a failure.
  const nlohmann::json* Find(const char* key, Field presence, absl::string_view expectation);
  bool Error(absl::string_view key, const nlohmann::json* value, absl::string_view expectation);

  const nlohmann::json& object_;
  const std::string where_;
  const std::string path_;
  absl::Status own_status_;
  absl::Status* const status_;  // &own_status_, or the root reader's
};

// The value as a message may show it: strings quoted and cut to kMaxEchoBytes, arrays and
// objects by their size, numbers and booleans as written; then its JSON type in parentheses.
std::string DescribeJsonValue(const nlohmann::json& value);

}  // namespace kvshare
