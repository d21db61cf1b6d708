// The `kvshare` command line against workers, as a user runs it (the binary as a subprocess):
// `kvshare chat` keeps the conversation in the model's chat template (the prompt sizes it
// reports are checked against the template applied here), /reset forgets it, /quit and end of
// input end it, locally and over a worker; worker commands default to $KVSHARE_WORKER; a
// search command given a worker's address says what the address serves; a server that never
// answers is reported as DEADLINE_EXCEEDED within --timeout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/inference/worker_fixture.h"
#include "tests/support/cli_process.h"
#include "tests/support/test_env.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr const char* kU1 = "What is 2+2?";
constexpr const char* kU2 = "And times 3?";

// The prompt sizes the chat printed to stderr, one per reply: "[N prompt tokens; ...".
std::vector<int> PromptTokens(const std::string& err) {
  std::vector<int> sizes;
  static const std::regex kStats(R"(\[(\d+) prompt tokens; )");
  for (std::sregex_iterator it(err.begin(), err.end(), kStats), end; it != end; ++it) {
    sizes.push_back(std::stoi((*it)[1]));
  }
  return sizes;
}

// The replies on stdout, one line each (the test's questions get one-line answers).
std::vector<std::string> Lines(const std::string& out) {
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// The prompt size of `messages` under SmolLM2's chat template, computed here.
int TemplateTokens(const std::vector<ChatMessage>& messages) {
  static auto* model = new std::unique_ptr<Model>(*Model::Load(testing::SmolLm2Path()));
  static auto* tok = new std::unique_ptr<Tokenizer>(*LoadTokenizerForModel(**model, ""));
  auto text = (*tok)->ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
  EXPECT_TRUE(text.ok()) << text.status();
  return static_cast<int>((*tok)->Encode(*text, /*add_bos=*/false).size());
}

// Two turns, a reset, the first question again, /quit, then a line that must not be read.
const std::string kSession =
    absl::StrCat(kU1, "\n", kU2, "\n/reset\n", kU1, "\n/quit\nWhat is 5+5?\n");

// The checks both chats share: three replies; turn 2's prompt holds turn 1 and its reply;
// after /reset the first question gets the first answer from the first prompt.
void ExpectConversation(const testing::CliRun& run) {
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const std::vector<std::string> replies = Lines(run.out);
  ASSERT_EQ(replies.size(), 3u) << run.out;
  EXPECT_FALSE(replies[0].empty());
  const std::vector<int> sizes = PromptTokens(run.err);
  ASSERT_EQ(sizes.size(), 3u) << run.err;
  EXPECT_EQ(sizes[0], TemplateTokens({{"user", kU1}}));
  EXPECT_EQ(sizes[1], TemplateTokens({{"user", kU1}, {"assistant", replies[0]}, {"user", kU2}}));
  EXPECT_EQ(sizes[2], sizes[0]);
  EXPECT_EQ(replies[2], replies[0]);  // greedy: the same prompt, the same reply
  EXPECT_THAT(run.err, HasSubstr("[conversation reset]"));
}

TEST(CliChatTest, LocalChatKeepsTheConversationAndResetForgetsIt) {
  const testing::CliRun run =
      testing::RunCli(KVSHARE_CLI_BINARY,
                      {"chat", "--model", testing::SmolLm2Path(), "--threads", "2", "--max-tokens",
                       "12", "--kv-type", "f32"},
                      kSession);
  ExpectConversation(run);
  // The first reply is what `kvshare generate --chat` answers to the same message.
  const testing::CliRun one = testing::RunCli(
      KVSHARE_CLI_BINARY, {"generate", "--model", testing::SmolLm2Path(), "--threads", "2",
                           "--max-tokens", "12", "--kv-type", "f32", "--chat", "--prompt", kU1});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(Lines(one.out), std::vector<std::string>{Lines(run.out)[0]});
}

TEST(CliChatTest, ChatOverAWorkerSendsTheWholeConversation) {
  auto worker = testing::LoopbackWorker::Start(testing::SmolLm2WorkerOptions());
  ASSERT_NE(worker, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", worker->server->port());
  const testing::CliRun run = testing::RunCli(
      KVSHARE_CLI_BINARY, {"chat", "--server", address, "--max-tokens", "12"}, kSession);
  ExpectConversation(run);
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("@ ", address, "]")));
}

TEST(CliChatTest, EndOfInputEndsTheSession) {
  auto worker = testing::LoopbackWorker::Start(testing::SmolLm2WorkerOptions());
  ASSERT_NE(worker, nullptr);
  const testing::CliRun run = testing::RunCli(
      KVSHARE_CLI_BINARY,
      {"chat", "--server", absl::StrCat("127.0.0.1:", worker->server->port()), "--max-tokens", "4"},
      absl::StrCat(kU1, "\n"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Lines(run.out).size(), 1u) << run.out;
}

TEST(CliChatTest, AModelWithoutAChatTemplateIsRefusedNamingIt) {
  const testing::CliRun run = testing::RunCli(
      KVSHARE_CLI_BINARY, {"chat", "--model", testing::Asset("stories260K.bin")}, "Hello\n");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out, "");
  EXPECT_THAT(run.err, StartsWith("error: --model: stories260K has no chat template"));
}

TEST(CliWorkerCommandsTest, DefaultAddressComesFromKvshareWorker) {
  auto worker = testing::LoopbackWorker::Start(testing::StoriesWorkerOptions());
  ASSERT_NE(worker, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", worker->server->port());
  const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, {"health", "--json"}, "",
                                              {absl::StrCat("KVSHARE_WORKER=", address)});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j, (nlohmann::json{{"server", address}, {"service", ""}, {"status", "SERVING"}}));
  // And the flag's help names the variable and the built-in default.
  const testing::CliRun help = testing::RunCli(KVSHARE_CLI_BINARY, {"load", "--help"});
  EXPECT_THAT(help.out, HasSubstr("(default: $KVSHARE_WORKER, else 127.0.0.1:50051)"));
}

TEST(CliWorkerCommandsTest, ASearchCommandGivenAWorkerSaysWhatTheAddressServes) {
  auto worker = testing::LoopbackWorker::Start(testing::StoriesWorkerOptions());
  ASSERT_NE(worker, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", worker->server->port());
  for (const auto& [args, service] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"strategies", "list"}, "kvshare.v1.StrategyRegistry"},
           {{"rollout", "list"}, "kvshare.v1.Rollouts"},
           {{"fleet", "status", "--json"}, "kvshare.v1.Rollouts"}}) {
    std::vector<std::string> full = args;
    full.insert(full.end(), {"--server", address});
    const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, full);
    EXPECT_EQ(run.exit_code, 1) << args[0];
    EXPECT_EQ(run.out, "");
    EXPECT_THAT(run.err, StartsWith(absl::StrCat("error: ", address,
                                                 " serves kvshare.v1.InferenceService, not ",
                                                 service, " (it is a kvshare-worker; ")))
        << run.err;
  }
}

// A TCP port that accepts connections (the kernel's backlog) and never answers.
class SilentServer {
 public:
  SilentServer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentServer() { close(fd_); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(CliWorkerCommandsTest, AServerThatNeverAnswersIsDeadlineExceededWithinTimeout) {
  SilentServer silent;
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"strategies", "list", "--server", silent.address(), "--timeout", "1"},
           {"generate", "--server", silent.address(), "--timeout", "1", "--prompt", "Hi"},
           {"load", "--server", silent.address(), "--timeout", "1", "--requests", "1"},
           {"fleet", "status", "--server", silent.address(), "--timeout", "1"}}) {
    const testing::CliRun run = testing::RunCli(KVSHARE_CLI_BINARY, args);
    EXPECT_EQ(run.exit_code, 1) << args[0];
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("error: ", silent.address(),
                                                ": no answer within 1 s (DEADLINE_EXCEEDED)")))
        << args[0] << ": " << run.err;
    EXPECT_LT(run.seconds, 10) << args[0];
  }
}

}  // namespace
}  // namespace kvshare
