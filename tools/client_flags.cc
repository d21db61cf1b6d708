#include "tools/client_flags.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace kvshare::cli {

const char* ServerEnvVar(ServerKind kind) {
  return kind == ServerKind::kSearch ? "KVSHARE_SERVER" : "KVSHARE_WORKER";
}

std::string BuiltInServer(ServerKind kind) {
  return kind == ServerKind::kSearch ? "127.0.0.1:50061" : "127.0.0.1:50051";
}

std::string DefaultServer(ServerKind kind) {
  const char* env = std::getenv(ServerEnvVar(kind));
  return env != nullptr && *env != '\0' ? std::string(env) : BuiltInServer(kind);
}

CLI::Option* AddServerFlag(CLI::App* app, std::string* server, ServerKind kind) {
  *server = DefaultServer(kind);
  const std::string what = kind == ServerKind::kSearch ? "kvshare-search" : "kvshare-worker";
  return app
      ->add_option("--server", *server,
                   absl::StrCat(what, " address HOST:PORT (default: $", ServerEnvVar(kind),
                                ", else ", BuiltInServer(kind), ")"))
      ->capture_default_str();
}

CLI::Option* AddTimeoutFlag(CLI::App* app, double* seconds, const std::string& what) {
  return app->add_option("--timeout", *seconds, what)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

CLI::Option* AddJsonFlag(CLI::App* app, bool* json, const std::string& what) {
  return app->add_flag("--json", *json, what);
}

std::chrono::system_clock::time_point DeadlineAfter(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.always_print_enums_as_ints = false;
  std::string out;
  // Only fails on a malformed message (e.g. invalid UTF-8 in a string), which proto parsing
  // has already refused.
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace kvshare::cli
