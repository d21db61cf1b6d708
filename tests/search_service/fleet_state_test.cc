// The fleet state on disk (search_service/server/fleet_state_file.h) through
// RolloutController::Open: a saved state comes back after a restart; a state.json that was
// written once and is now missing or emptied, one that does not parse (wrong types, bad JSON,
// deep nesting, bad UTF-8, oversize) and one that breaks an invariant (duplicate ids, a
// next_rollout_number that would reuse an id, versions the store lacks, ...) is refused with
// DataLoss naming the file, the field and the value — never read as an empty state, never a
// crash; a pin to a version the store lacks is NotFound and not kept.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "search_service/server/fleet_state_file.h"
#include "search_service/server/in_memory_strategy_store.h"
#include "search_service/server/rollout_controller.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kModel(64, 'a');  // versions 1, 2, 3 published
const std::string kBare(64, 'b');   // nothing published

class FleetStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrFormat("%s/fleet_state_test.%d.%s", ::testing::TempDir(), getpid(),
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    for (const std::vector<int>& kv : {std::vector<int>{0, 0, 2, 3}, std::vector<int>{0, 1, 1, 3},
                                       std::vector<int>{0, 0, 2, 2}}) {
      auto s = SharingStrategy::Create(kv, kModel);
      ASSERT_TRUE(s.ok()) << s.status();
      auto published =
          store_.Publish(std::make_shared<const SharingStrategy>(std::move(*s)), {"m", ""});
      ASSERT_TRUE(published.ok()) << published.status();
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  absl::StatusOr<std::unique_ptr<RolloutController>> Open() {
    return RolloutController::Open({dir_, absl::Seconds(30)}, &store_);
  }
  std::string StatePath() const { return dir_ + "/state.json"; }
  void WriteRaw(const std::string& text) {
    fs::create_directories(dir_);
    std::ofstream(StatePath(), std::ios::binary | std::ios::trunc) << text;
  }
  void Write(const v1::FleetControlState& state) {
    std::string json;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(state, &json).ok());
    WriteRaw(json);
  }
  // Writes the marker as a controller's first save would, with a valid state.
  void SaveOnce() {
    auto c = Open();
    ASSERT_TRUE(c.ok()) << c.status();
    v1::Pin pin;
    pin.set_worker_id("w1");
    pin.set_model(kModel);
    pin.set_version(1);
    ASSERT_TRUE((*c)->SetPin(pin).ok());
  }

  // Two rollouts (r1 completed 1 -> 2, r2 running 2 -> 3), two pins and a baseline: what a
  // controller writes after a while.
  static v1::FleetControlState Valid() {
    v1::FleetControlState s;
    v1::Rollout* r1 = s.add_rollouts();
    r1->set_rollout_id("r1");
    r1->set_model_fingerprint(kModel);
    r1->set_from_version(1);
    r1->set_target_version(2);
    r1->add_steps(50);
    r1->add_steps(100);
    r1->set_current_step(1);
    r1->set_state(v1::ROLLOUT_COMPLETED);
    r1->add_selected_workers("w1");
    r1->add_selected_workers("w2");
    v1::Rollout* r2 = s.add_rollouts();
    *r2 = *r1;
    r2->set_rollout_id("r2");
    r2->set_from_version(2);
    r2->set_target_version(3);
    r2->set_current_step(0);
    r2->set_state(v1::ROLLOUT_RUNNING);
    r2->set_label_selector("zone=a");
    v1::Pin* p = s.add_pins();
    p->set_worker_id("w1");
    p->set_model(kModel);
    p->set_version(1);
    p = s.add_pins();
    p->set_label("zone=b");
    p->set_model(kModel);
    p->set_version(0);  // the identity
    (*s.mutable_baselines())[kModel] = 2;
    s.set_next_rollout_number(2);
    s.set_generation(7);
    return s;
  }

  std::string dir_;
  InMemoryStrategyStore store_;
};

void ExpectDataLoss(const absl::Status& s, const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  for (const std::string& part : parts) EXPECT_THAT(s.message(), HasSubstr(part));
}

TEST_F(FleetStateTest, ARestartResumesTheSavedRolloutsPinsAndNumbering) {
  Write(Valid());
  {
    auto c = Open();
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_EQ((*c)->ListRollouts().size(), 2u);
    EXPECT_EQ((*c)->ListPins().size(), 2u);
    // r2 is still active: a new rollout of the model waits; abort it, start the next one.
    EXPECT_EQ((*c)->CreateRollout(kModel, "", 1, {}, "").status().code(),
              absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE((*c)->Abort("r2").ok());
    auto r3 = (*c)->CreateRollout(kModel, "", 1, {100}, "");
    ASSERT_TRUE(r3.ok()) << r3.status();
    EXPECT_EQ(r3->rollout_id(), "r3");
    EXPECT_EQ(r3->from_version(), 2u);  // the baseline the abort restored
  }
  auto c = Open();
  ASSERT_TRUE(c.ok()) << c.status();
  auto r3 = (*c)->GetRollout("r3");
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_EQ(r3->target_version(), 1u);
  EXPECT_EQ((*c)->GetRollout("r2")->state(), v1::ROLLOUT_ABORTED);
}

TEST_F(FleetStateTest, AFreshDirectoryOpensEmpty) {
  auto c = Open();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->ListRollouts(), IsEmpty());
  EXPECT_THAT((*c)->ListPins(), IsEmpty());
}

TEST_F(FleetStateTest, AStateWrittenOnceAndNowMissingIsDataLossUntilTheMarkerIsRemoved) {
  SaveOnce();
  ASSERT_TRUE(fs::remove(StatePath()));
  ExpectDataLoss(Open().status(), {StatePath(), "is missing", "STATE_WRITTEN", "remove"});
  // Refusing leaves everything as it was: a second start says the same.
  ExpectDataLoss(Open().status(), {"is missing"});
  // Starting empty is an operator's explicit act.
  ASSERT_TRUE(fs::remove(dir_ + "/STATE_WRITTEN"));
  auto c = Open();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->ListPins(), IsEmpty());
}

TEST_F(FleetStateTest, AnEmptiedStateIsDataLossNotAnEmptyFleet) {
  for (const std::string text : {"{}", "", "{\"pins\": []}"}) {
    SCOPED_TRACE(text);
    fs::remove_all(dir_);
    SaveOnce();
    WriteRaw(text);
    const absl::Status s = Open().status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr(StatePath()));
  }
  // Without the marker (a state from before generations), "{}" is an empty state.
  fs::remove(dir_ + "/STATE_WRITTEN");
  WriteRaw("{}");
  EXPECT_TRUE(Open().ok());
}

struct InvalidCase {
  std::string name;
  std::function<void(v1::FleetControlState&)> mutate;
  std::vector<std::string> message;
};

TEST_F(FleetStateTest, AnInconsistentStateIsRefusedNamingTheFieldTheValueAndTheExpectation) {
  const std::string long_id = "r" + std::string(1000, '9');
  const std::vector<InvalidCase> cases = {
      {"next_rollout_number would reuse an id",
       [](v1::FleetControlState& s) { s.set_next_rollout_number(0); },
       {"next_rollout_number 0 is below 1", "rollouts[0].rollout_id \"r1\""}},
      {"next_rollout_number below the last",
       [](v1::FleetControlState& s) { s.set_next_rollout_number(1); },
       {"next_rollout_number 1 is below 2", "rollouts[1].rollout_id \"r2\""}},
      {"duplicate rollout id",
       [](v1::FleetControlState& s) { s.mutable_rollouts(1)->set_rollout_id("r1"); },
       {"rollouts[1].rollout_id \"r1\" is used twice"}},
      {"rollout id not r<n>",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_rollout_id("x7"); },
       {"rollouts[0].rollout_id \"x7\" is not r<number>"}},
      {"rollout id too long for a number, shown truncated",
       [&](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_rollout_id(long_id); },
       {"rollouts[0].rollout_id", "(1001 bytes)"}},
      {"target version missing",
       [](v1::FleetControlState& s) { s.mutable_rollouts(1)->set_target_version(9); },
       {"rollouts[1].target_version 9 is not a published version"}},
      {"target version 0",
       [](v1::FleetControlState& s) { s.mutable_rollouts(1)->set_target_version(0); },
       {"rollouts[1].target_version 0"}},
      {"from version missing",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_from_version(8); },
       {"rollouts[0].from_version 8 is not a version"}},
      {"rollout of a model with no strategies",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_model_fingerprint(kBare); },
       {"rollouts[0].target_version 2 is not a published version of model \"bbbb"}},
      {"current step past the steps",
       [](v1::FleetControlState& s) { s.mutable_rollouts(1)->set_current_step(2); },
       {"rollouts[1].current_step 2 is not below the 2 steps"}},
      {"no steps",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->clear_steps(); },
       {"rollouts[0].steps is empty"}},
      {"steps not increasing",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_steps(0, 100); },
       {"rollouts[0].steps[1] 100: percents in [1, 100], increasing"}},
      {"last step not 100",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_steps(1, 60); },
       {"rollouts[0].steps[1] 60: the last step must be 100"}},
      {"unknown state",
       [](v1::FleetControlState& s) {
         s.mutable_rollouts(0)->set_state(static_cast<v1::RolloutState>(9));
       },
       {"rollouts[0].state 9 is not a rollout state"}},
      {"bad selector",
       [](v1::FleetControlState& s) { s.mutable_rollouts(1)->set_label_selector("zone"); },
       {"rollouts[1].label_selector \"zone\""}},
      {"two active rollouts of one model",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->set_state(v1::ROLLOUT_PAUSED); },
       {"rollouts[1].rollout_id \"r2\" is active for model", "as is rollout \"r1\""}},
      {"a worker selected twice",
       [](v1::FleetControlState& s) { s.mutable_rollouts(0)->add_selected_workers("w1"); },
       {"rollouts[0].selected_workers names worker \"w1\" twice"}},
      {"pin to a missing version",
       [](v1::FleetControlState& s) { s.mutable_pins(0)->set_version(7); },
       {"pins[0].version 7 is not a version of model \"aaaa"}},
      {"pin to the identity of a model with no strategies",
       [](v1::FleetControlState& s) { s.mutable_pins(1)->set_model(kBare); },
       {"pins[1].version 0 is not a version of model \"bbbb"}},
      {"pin with no selector",
       [](v1::FleetControlState& s) { s.mutable_pins(0)->clear_selector(); },
       {"pins[0]: pin: give worker_id or label"}},
      {"pin on two labels",
       [](v1::FleetControlState& s) { s.mutable_pins(1)->set_label("zone=b,gpu=x"); },
       {"pins[1]: label \"zone=b,gpu=x\": a pin names one key=value"}},
      {"two pins on one worker",
       [](v1::FleetControlState& s) { *s.add_pins() = s.pins(0); },
       {"pins[2]: a second pin on \"worker w1\""}},
      {"baseline to a missing version",
       [](v1::FleetControlState& s) { (*s.mutable_baselines())[kModel] = 5; },
       {"] 5 is not a version of that model"}},
  };
  for (const InvalidCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::FleetControlState state = Valid();
    c.mutate(state);
    Write(state);
    std::vector<std::string> message = c.message;
    message.push_back(StatePath() + ": ");
    ExpectDataLoss(Open().status(), message);
  }
  Write(Valid());
  EXPECT_TRUE(Open().ok());  // the same state, unbroken, is accepted
}

TEST_F(FleetStateTest, JsonThatDoesNotParseIsDataLossNeverACrash) {
  const std::vector<std::string> texts = {
      "{\"next_rollout_number\": \"abc\"}",
      "{\"next_rollout_number\": 18446744073709551616}",
      "{\"next_rollout_number\": -1}",
      "{\"generation\": 1.5}",
      "{\"rollouts\": 5}",
      "{\"rollouts\": [{\"steps\": \"x\"}]}",
      "{\"rollouts\": [{\"steps\": [4294967296]}]}",
      "{\"rollouts\": [{\"state\": \"ROLLOUT_EXPLODED\"}]}",
      "{\"rollouts\": [{\"rollout_id\": {\"nested\": true}}]}",
      "{\"pins\": [{\"version\": -1}]}",
      "{\"pins\": [{\"worker_id\": \"w\", \"label\": \"a=b\"}]}",
      "{\"baselines\": {\"x\": \"not a number\"}}",
      "{\"baselines\": []}",
      "{\"unknown_field\": 1}",
      "{\"rollouts\": [{\"rollout_id\": \"r1\"",
      "{\"rollouts\": [{\"rollout_id\": \"\xff\xfe\"}]}",
      std::string("\0\x01\x02garbage", 10),
      "null",
      "[]",
      std::string(100000, '[') + std::string(100000, ']'),
  };
  for (const std::string& text : texts) {
    SCOPED_TRACE(text.substr(0, 80));
    WriteRaw(text);
    ExpectDataLoss(Open().status(), {StatePath(), "does not parse as FleetControlState"});
  }
  // protobuf's JSON parser flattens lists nested in a repeated field ([[x]] reads as [x]), at
  // any depth and without recursion: 100000 levels read as the empty list they hold.
  WriteRaw("{\"rollouts\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  auto c = Open();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->ListRollouts(), IsEmpty());
}

TEST_F(FleetStateTest, AnOversizedStateIsRefusedBeforeItIsRead) {
  WriteRaw("{}");
  fs::resize_file(StatePath(), kMaxFleetStateBytes + 1);  // sparse: nothing is written
  ExpectDataLoss(Open().status(),
                 {StatePath(), absl::StrFormat("%d bytes is over the limit of %d bytes",
                                               kMaxFleetStateBytes + 1, kMaxFleetStateBytes)});
}

TEST_F(FleetStateTest, APinToAVersionThatDoesNotExistIsNotFoundAndNotKept) {
  {
    auto c = Open();
    ASSERT_TRUE(c.ok()) << c.status();
    v1::Pin pin;
    pin.set_worker_id("w1");
    pin.set_model(kModel);
    pin.set_version(99);
    auto set = (*c)->SetPin(pin);
    EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(set.status().message(), AllOf(HasSubstr(kModel), HasSubstr("version 99")));
    pin.set_model(kBare);
    pin.set_version(0);
    set = (*c)->SetPin(pin);
    EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(set.status().message(), HasSubstr("version 0"));
    EXPECT_THAT((*c)->ListPins(), IsEmpty());
    EXPECT_EQ((*c)->ClearPin(pin).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_FALSE(fs::exists(StatePath()));  // nothing was saved
}

}  // namespace
}  // namespace kvshare
