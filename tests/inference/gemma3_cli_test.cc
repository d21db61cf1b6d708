// Gemma 3 through the binaries as a user runs them (issue 20 item 3): `kvshare info`,
// `generate`, `eval`, a local `search` whose strategy keeps the local/global rule and then
// loads for `eval --strategy`, and a kvshare-worker serving it to `kvshare generate --server`.
// Skips, naming the command, where the Gemma 3 file is missing.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

constexpr char kFile[] = "gemma-3-270m-q4_k_m.gguf";

// Spawns binary with args; returns its pid, stdout and stderr going to `log`.
pid_t Spawn(const std::string& binary, std::vector<std::string> args, const std::string& log) {
  args.insert(args.begin(), binary);
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f != nullptr) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs to exit (killed after `timeout`: -1): the exit status and the output.
std::pair<int, std::string> RunBinary(const std::string& binary, std::vector<std::string> args,
                                      absl::Duration timeout = absl::Minutes(5)) {
  static int runs = 0;
  const std::string log =
      absl::StrCat(::testing::TempDir(), "/gemma3-cli-", getpid(), "-", runs++, ".log");
  const pid_t pid = Spawn(binary, std::move(args), log);
  int code = -1;
  const absl::Time end = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (absl::Now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return {code, ReadAll(log)};
}

class Gemma3CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::TestModel(kFile);
    if (model_.empty()) GTEST_SKIP() << testing::TestModelMissing(kFile);
  }
  std::string model_;
};

TEST_F(Gemma3CliTest, InfoGenerateEvalAndSearchRunOnGemma3) {
  auto [code, out] = RunBinary(KVSHARE_CLI_BINARY, {"info", "--model", model_});
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("gemma3"), std::string::npos) << out;

  std::tie(code, out) = RunBinary(KVSHARE_CLI_BINARY, {"generate", "--model", model_, "--prompt",
                                                       "def fibonacci(n):", "--max-tokens", "8",
                                                       "--temperature", "0", "--threads", "2"});
  ASSERT_EQ(code, 0) << out;
  // llama.cpp's greedy continuation of this prompt starts with a newline and "if n".
  EXPECT_NE(out.find("if n"), std::string::npos) << out;

  const std::string wiki = testing::Asset("wikitext-2-raw-test.txt");
  std::tie(code, out) =
      RunBinary(KVSHARE_CLI_BINARY, {"eval", "--model", model_, "--data", wiki, "--max-tokens",
                                     "512", "--context", "512", "--json", "--threads", "2"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("perplexity"), std::string::npos) << out;

  const std::string strategy = absl::StrCat(::testing::TempDir(), "/gemma3-", getpid(), ".json");
  std::tie(code, out) = RunBinary(
      KVSHARE_CLI_BINARY, {"search", "--model", model_, "--calibration", wiki, "--target-layers",
                           "3", "--samples", "4", "--tokens", "32", "--heldout-tokens", "64",
                           "--heldout-context", "64", "--out", strategy, "--threads", "2"});
  ASSERT_EQ(code, 0) << out;
  const nlohmann::json s = nlohmann::json::parse(ReadAll(strategy));
  const auto src = s["kv_source"].get<std::vector<int>>();
  ASSERT_EQ(src.size(), 18u);
  int sharing = 0;
  for (int l = 0; l < 18; ++l) {
    sharing += src[l] != l;
    // The local/global rule: sources are of the layer's own kind (globals are 5, 11, 17).
    EXPECT_EQ(src[l] % 6 == 5, l % 6 == 5) << "layer " << l << " reads " << src[l];
  }
  EXPECT_EQ(sharing, 3);
  std::tie(code, out) =
      RunBinary(KVSHARE_CLI_BINARY,
                {"eval", "--model", model_, "--data", wiki, "--max-tokens", "256", "--context",
                 "256", "--stride", "256", "--strategy", strategy, "--threads", "2"});
  EXPECT_EQ(code, 0) << out;
}

TEST_F(Gemma3CliTest, AWorkerServesGemma3) {
  const std::string dir = ::testing::TempDir();
  const std::string port_file = absl::StrCat(dir, "/gemma3-worker-", getpid(), ".port");
  std::remove(port_file.c_str());
  const pid_t worker = Spawn(KVSHARE_WORKER_BINARY,
                             {"--model", model_, "--threads", "2", "--host", "127.0.0.1", "--port",
                              "0", "--port-file", port_file, "--kv-budget-mib", "64"},
                             absl::StrCat(dir, "/gemma3-worker-", getpid(), ".log"));
  int port = 0;
  for (const absl::Time end = absl::Now() + absl::Minutes(3); port == 0 && absl::Now() < end;) {
    std::ifstream in(port_file);
    if (!(in >> port)) port = 0;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_GT(port, 0) << ReadAll(absl::StrCat(dir, "/gemma3-worker-", getpid(), ".log"));
  // The port opens before the model is ready: retry while the worker says it is loading.
  int code = -1;
  std::string out;
  for (const absl::Time end = absl::Now() + absl::Minutes(3); code != 0 && absl::Now() < end;) {
    std::tie(code, out) = RunBinary(
        KVSHARE_CLI_BINARY, {"generate", "--server", absl::StrCat("127.0.0.1:", port), "--prompt",
                             "def fibonacci(n):", "--max-tokens", "8", "--temperature", "0"});
    if (code != 0) absl::SleepFor(absl::Seconds(1));
  }
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("if n"), std::string::npos) << out;
  kill(worker, SIGTERM);
  int status = 0;
  waitpid(worker, &status, 0);
}

}  // namespace
}  // namespace kvshare
