// The `kvshare` commands that talk to the search service (the binary as a subprocess, against
// a kvshare-search in this process): --json prints the responses with the proto's field
// names; the default address comes from $KVSHARE_SERVER; a worker command given the search
// service's address says what that address serves.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "search_service/server/search_server.h"
#include "tests/support/cli_process.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class CliSearchCommandsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        absl::StrFormat("%s/cli_search_commands_test.%d", ::testing::TempDir(), getpid()));
    std::filesystem::remove_all(*dir_);
    std::filesystem::create_directories(*dir_);
    const std::string catalog = *dir_ + "/catalog.json";
    std::ofstream(catalog) << absl::StrFormat(
        R"({"format": "kvshare.catalog.v1",
            "models": [{"name": "stories260K", "path": "%s", "format": "llama2c",
                        "tokenizer": "%s"}],
            "calibration_corpora": [{"name": "tinystories", "path": "%s"}]})",
        testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"),
        testing::Asset("tinystories-sample.txt"));
    SearchServerOptions options;
    options.address = "127.0.0.1:0";
    options.data_dir = *dir_ + "/data";
    options.catalog_path = catalog;
    auto server = SearchServer::Start(options, nullptr);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static std::string Address() { return absl::StrCat("127.0.0.1:", server_->port()); }

  // `kvshare args... --server <this service>`; expects exit 0 and returns stdout as JSON.
  static nlohmann::json Json(std::vector<std::string> args) {
    args.insert(args.end(), {"--server", Address(), "--json"});
    const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, args);
    EXPECT_EQ(run.exit_code, 0) << run.err;
    EXPECT_EQ(run.out.find('\n'), run.out.size() - 1) << "one line: " << run.out;
    return nlohmann::json::parse(run.out, nullptr, /*allow_exceptions=*/false);
  }

  static inline std::string* dir_ = nullptr;
  static inline SearchServer* server_ = nullptr;
};

TEST_F(CliSearchCommandsTest, JsonListsAndStatusesUseTheProtoFieldNames) {
  EXPECT_EQ(Json({"strategies", "list"}), (nlohmann::json{{"records", nlohmann::json::array()}}));
  EXPECT_EQ(Json({"rollout", "list"}), (nlohmann::json{{"rollouts", nlohmann::json::array()}}));
  const nlohmann::json fleet = Json({"fleet", "status"});
  EXPECT_EQ(fleet["workers"], nlohmann::json::array()) << fleet;
  EXPECT_EQ(fleet["active_rollouts"], nlohmann::json::array()) << fleet;

  // A published identity strategy of stories260K (5 layers), listed and shown.
  auto model = Model::Load(testing::Asset("stories260K.bin"), testing::Asset("tok512.bin"));
  ASSERT_TRUE(model.ok()) << model.status();
  const std::string fingerprint = (*model)->fingerprint();
  const std::string file = *dir_ + "/identity.json";
  ASSERT_TRUE(SharingStrategy::Identity(5, fingerprint).WriteFile(file).ok());
  const testing::CliRun publish =
      testing::RunCli(KVSHARE_CLI_BINARY, {"strategies", "publish", "--server", Address(),
                                           "--strategy", file, "--model-name", "stories260K"});
  ASSERT_EQ(publish.exit_code, 0) << publish.err;

  const nlohmann::json list = Json({"strategies", "list"});
  ASSERT_EQ(list["records"].size(), 1u) << list;
  const nlohmann::json& record = list["records"][0];
  EXPECT_EQ(record["model_fingerprint"], fingerprint);
  EXPECT_EQ(record["model_name"], "stories260K");
  EXPECT_EQ(record["version"], "1");  // proto3 JSON writes 64-bit integers as strings
  EXPECT_EQ(record["deprecated"], false);
  EXPECT_EQ(record["strategy"]["kv_source"], (nlohmann::json{0, 1, 2, 3, 4}));
  EXPECT_EQ(Json({"strategies", "show", "--model", fingerprint, "--version", "1"}), record);
}

TEST_F(CliSearchCommandsTest, DefaultAddressComesFromKvshareServer) {
  const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, {"rollout", "list", "--json"}, "",
                                              {absl::StrCat("KVSHARE_SERVER=", Address())});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "{\"rollouts\":[]}\n");
  const testing::CliRun help = testing::RunCli(KVSHARE_CLI_BINARY, {"fleet", "status", "--help"});
  EXPECT_THAT(help.out, HasSubstr("(default: $KVSHARE_SERVER, else 127.0.0.1:50061)"));
}

TEST_F(CliSearchCommandsTest, AWorkerCommandGivenTheSearchServiceSaysWhatItServes) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"load", "--server", Address(), "--requests", "1"},
                                             {"generate", "--server", Address(), "--prompt", "Hi"},
                                             {"chat", "--server", Address()}}) {
    const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, args, "Hello\n");
    EXPECT_EQ(run.exit_code, 1) << args[0];
    EXPECT_THAT(run.err,
                StartsWith(absl::StrCat(
                    "error: ", Address(),
                    " serves kvshare.v1.SearchService, kvshare.v1.StrategyRegistry, "
                    "kvshare.v1.Rollouts, kvshare.v1.StrategyDistribution, not "
                    "kvshare.v1.InferenceService (it is a kvshare-search; this command talks to "
                    "a kvshare-worker")))
        << args[0] << ": " << run.err;
  }
}

// `kvshare search` on stories260K and its TinyStories sample, held out on 512 tokens in
// 128-token windows, writing `out`.
std::vector<std::string> StoriesSearchArgs(const std::string& out) {
  return {"search",
          "--model",
          testing::Asset("stories260K.bin"),
          "--tokenizer",
          testing::Asset("tok512.bin"),
          "--calibration",
          testing::Asset("tinystories-sample.txt"),
          "--heldout-tokens",
          "512",
          "--heldout-context",
          "128",
          "--out",
          out,
          "--threads",
          "2"};
}

// --activations: the KV plan search and the nll sharing rule measure with two int8 digits
// unless told otherwise, and say so in the header and the strategy's note; the paper's search
// and the drop search refuse anything but f32 rather than ignoring the flag.
TEST_F(CliSearchCommandsTest, ActivationsApplyToTheSearchesAndAreRecorded) {
  const std::string out = *dir_ + "/plan.json";
  const std::vector<std::string> base = StoriesSearchArgs(out);
  std::vector<std::string> args = base;
  args.insert(args.end(),
              {"--target-layers", "2", "--method", "kvsharer", "--activations", "int8x2"});
  testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, args);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.err,
              HasSubstr("--activations int8x2: the paper's search (method kvsharer) measures "
                        "with exact (f32) activations"));
  args = base;
  args.insert(args.end(), {"--target-layers", "2", "--drop-attention", "--int8"});
  run = testing::RunCli(KVSHARE_CLI_BINARY, args);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.err, HasSubstr("--activations int8: --drop-attention measures with exact (f32)"));

  struct Case {
    std::vector<std::string> search;  // the search's flags
    const char* given;                // --activations, or "" for the default
    const char* used;
  };
  for (const Case& c :
       {Case{{"--max-ppl-increase", "5"}, "", "int8x2"},
        Case{{"--max-ppl-increase", "5"}, "f32", "f32"}, Case{{"--target-layers", "2"}, "", "int8"},
        Case{{"--target-layers", "2"}, "f32", "f32"},
        Case{{"--target-layers", "2", "--method", "kvsharer"}, "", "f32"}}) {
    SCOPED_TRACE(absl::StrCat(absl::StrJoin(c.search, " "), " / ", c.given));
    args = base;
    args.insert(args.end(), c.search.begin(), c.search.end());
    if (*c.given != '\0') args.insert(args.end(), {"--activations", c.given});
    run = testing::RunCli(KVSHARE_CLI_BINARY, args);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_THAT(run.err, HasSubstr(std::string(c.used) + " activations"));
    auto st = SharingStrategy::ReadFile(out);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_THAT(st->provenance().note,
                HasSubstr(std::string("forwards with ") + c.used + " activations"));
  }

  // Through the search service: the request carries them (CreateSearchJobRequest.activations).
  run = testing::RunCli(KVSHARE_CLI_BINARY,
                        {"search", "--server", Address(), "--model", "stories260K",
                         "--calibration-corpus", "tinystories", "--target-layers", "1",
                         "--activations", "f32", "--out", *dir_ + "/served.json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto served = SharingStrategy::ReadFile(*dir_ + "/served.json");
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_THAT(served->provenance().note, HasSubstr("forwards with f32 activations"));
}

// `kvshare search --drop-attention`: the calibrated drop search writes a strategy of dropped
// layers (with their linear substitutes when those beat the bare drops), its held-out quality
// on record, and the service takes it like any strategy.
TEST_F(CliSearchCommandsTest, ADropSearchWritesAStrategyThatPublishes) {
  const std::string out = *dir_ + "/drops.json";
  std::vector<std::string> base = StoriesSearchArgs(out);
  base.insert(base.end(), {"--target-layers", "2"});
  std::vector<std::string> args = base;
  args.push_back("--no-substitutes");
  testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, args);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.err, HasSubstr("--no-substitutes: only with --drop-attention"));

  args = base;
  args.push_back("--drop-attention");
  run = testing::RunCli(KVSHARE_CLI_BINARY, args);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("heldout    perplexity"));
  auto st = SharingStrategy::ReadFile(out);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->attention_dropped().size(), 2u);
  EXPECT_THAT(run.out, HasSubstr("ridge      0.03 "));  // every default ridge was fitted
  // On stories260K (dim 64) the substitutes do not beat the bare drops on the scoring set (they
  // do on SmolLM2: docs/METHOD.md §7); the search then keeps the bare drops and says so.
  if (st->projections() == nullptr) {
    EXPECT_THAT(run.out, HasSubstr("no substitute beat the bare drops"));
  } else {
    EXPECT_EQ(st->projections()->substitutes(), st->attention_dropped());
    EXPECT_TRUE(st->projections()->layers().empty());
  }
  EXPECT_EQ(st->provenance().method, "drop");
  EXPECT_TRUE(st->provenance().has_quality());

  // Ranked with each drop's own substitute: another ranking, the same kind of result.
  args.push_back("--rank-with-substitutes");
  for (std::string& a : args) {
    if (a == out) a = *dir_ + "/drops-ranked.json";
  }
  const testing::CliRun ranked = testing::RunCli(KVSHARE_CLI_BINARY, args);
  ASSERT_EQ(ranked.exit_code, 0) << ranked.err;
  EXPECT_THAT(ranked.err, HasSubstr("costs least with its substitute"));

  const testing::CliRun publish =
      testing::RunCli(KVSHARE_CLI_BINARY, {"strategies", "publish", "--server", Address(),
                                           "--strategy", out, "--model-name", "stories260K"});
  ASSERT_EQ(publish.exit_code, 0) << publish.err;
  const nlohmann::json list = Json({"strategies", "list"});
  bool found = false;
  for (const auto& record : list["records"]) {
    found |=
        record["strategy"]["id"] == st->id() && record["strategy"]["attention_dropped"].size() == 2;
  }
  EXPECT_TRUE(found) << list;
}

}  // namespace
}  // namespace kvshare
