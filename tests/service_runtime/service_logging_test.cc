// Service log lines (service_runtime/service_logging.h, log_value.h): a value with a quote, a
// newline or a control byte stays one value of one line, in logfmt and in json; the formats
// are checked against lines written out by hand.
#include "service_runtime/service_logging.h"

#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "service_runtime/log_value.h"
#include "spdlog/logger.h"
#include "spdlog/sinks/ostream_sink.h"

namespace kvshare::runtime {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

// A value an attacker controls (a worker id, an error echoing a request, a deprecation
// reason): it tries to close the quoted value, add a field, and start a forged second line.
const std::string kForgery = "w1\" level=critical forged=1\nts=2000-01-01T00:00:00Z level=error";

// The lines `log` writes through a logger with `format`'s formatter.
template <typename Log>
std::string Capture(const std::string& format, Log log) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
  spdlog::logger logger("test", sink);
  logger.set_formatter(MakeLogFormatter(format));
  log(logger);
  return out.str();
}

TEST(LogfmtValueTest, PlainValuesStayBareAndTheRestAreQuotedAndEscaped) {
  EXPECT_EQ(LogfmtValue("w1"), "w1");
  EXPECT_EQ(LogfmtValue("127.0.0.1:50051"), "127.0.0.1:50051");
  EXPECT_EQ(LogfmtValue(""), "\"\"");
  EXPECT_EQ(LogfmtValue("a b"), "\"a b\"");
  EXPECT_EQ(LogfmtValue("pool=a"), "\"pool=a\"");
  EXPECT_EQ(LogfmtValue("x\"y\\z\n\r\t\x01\x7f"), R"("x\"y\\z\n\r\t\u0001\u007f")");
  EXPECT_EQ(LogfmtValue("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 passes through
}

TEST(LogfmtValueTest, ParseReadsBackWhatLogfmtValueWrites) {
  for (const std::string& v : {std::string("w1"), std::string(""), std::string("a b"), kForgery,
                               std::string("\x01\x02\x1f\x7f\\\\\"")}) {
    auto fields = ParseLogfmt("k=" + LogfmtValue(v) + " next=1");
    ASSERT_TRUE(fields.ok()) << fields.status();
    EXPECT_THAT(*fields, ElementsAre(Pair("k", v), Pair("next", "1")));
  }
  EXPECT_FALSE(ParseLogfmt("k=\"unterminated").ok());
  EXPECT_FALSE(ParseLogfmt("k=\"a\"b").ok());
  EXPECT_FALSE(ParseLogfmt("no key here").ok());
}

TEST(ServiceLoggingTest, LogfmtValueCannotForgeAFieldOrALine) {
  const std::string out = Capture("logfmt", [](spdlog::logger& l) {
    l.warn("event=worker_nack worker_id={} version={}", LogValue(kForgery), 3);
  });
  ASSERT_EQ(out.find('\n'), out.size() - 1) << out;  // one line
  auto fields = ParseLogfmt(out.substr(0, out.size() - 1));
  ASSERT_TRUE(fields.ok()) << fields.status() << "\n" << out;
  ASSERT_EQ(fields->size(), 5u) << out;
  EXPECT_EQ((*fields)[0].first, "ts");
  EXPECT_THAT((*fields)[1], Pair("level", "warning"));
  EXPECT_THAT((*fields)[2], Pair("event", "worker_nack"));
  EXPECT_THAT((*fields)[3], Pair("worker_id", kForgery));
  EXPECT_THAT((*fields)[4], Pair("version", "3"));
}

TEST(ServiceLoggingTest, AValueLoggedWithoutLogValueStillCannotStartASecondLine) {
  const std::string out = Capture("logfmt", [](spdlog::logger& l) {
    l.info("event=x error=\"{}\"", std::string("a\nts=forged level=critical\r\x1b[2J"));
  });
  EXPECT_EQ(out.find('\n'), out.size() - 1) << out;
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  EXPECT_NE(out.find(R"(a\nts=forged level=critical\r\u001b[2J)"), std::string::npos) << out;
}

TEST(ServiceLoggingTest, JsonHoldsTheFieldsAsStringsAndTheMessageCannotOverrideTheLevel) {
  const std::string out = Capture("json", [](spdlog::logger& l) {
    l.error("event=job_done job_id={} level=critical seconds={:.2f} error={}", LogValue("j1"), 1.5,
            LogValue(kForgery));
  });
  ASSERT_EQ(out.find('\n'), out.size() - 1) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j.size(), 6u) << out;  // ts, level, event, job_id, seconds, error
  EXPECT_TRUE(j["ts"].is_string());
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["event"], "job_done");
  EXPECT_EQ(j["job_id"], "j1");
  EXPECT_EQ(j["seconds"], "1.50");
  EXPECT_EQ(j["error"], kForgery);
}

TEST(ServiceLoggingTest, JsonKeepsAMessageThatIsNotLogfmtWhole) {
  const std::string out =
      Capture("json", [](spdlog::logger& l) { l.info("started \"x\" \n at {}", "y"); });
  ASSERT_EQ(out.find('\n'), out.size() - 1) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["msg"], "started \"x\" \n at y");
  EXPECT_EQ(j["level"], "info");
}

TEST(ServiceLoggingTest, SetUpRefusesAnUnknownFormatNamingIt) {
  const absl::Status s = SetUpServiceLogging("t", "info", "yaml");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("--log-format 'yaml'"));
}

}  // namespace
}  // namespace kvshare::runtime
