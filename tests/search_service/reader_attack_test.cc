// The attack run's reader cases as deterministic tests (issue 19): every JSON reader meets a
// type/range/size mutation of every field and answers a Status naming the field (never an
// exception, never a silent accept of a wrongly typed value); a damaged data directory is
// refused or quarantined by name on restart, nothing lost or overwritten; oversized requests
// and files are refused naming the limit before anything is allocated for them.
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>

#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/strategy/sharing_strategy.h"
#include "common/util/excerpt.h"
#include "common/util/file.h"
#include "common/util/json_fields.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "search_service/server/directory_strategy_store.h"
#include "search_service/server/job_journal.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/search_job_request.h"

namespace kvshare {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

const std::string kFingerprint(64, 'a');

std::string TempDir(const std::string& name) {
  const std::string dir = absl::StrFormat("%s/%s.%d", ::testing::TempDir(), name, getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

SharingStrategy MeasuredStrategy() {
  auto st = SharingStrategy::Create({0, 0, 2, 2, 4}, kFingerprint);
  EXPECT_TRUE(st.ok());
  StrategyProvenance& p = st->provenance();
  p.method = "kvsharer";
  p.order = "dissimilar";
  p.threshold = 0.5;
  p.calibration_hash = "c0ffee";
  p.target_layers = 2;
  p.score = 0.9;
  p.note = "n";
  p.best_of = 2;
  p.max_nll_increase = 0.1;
  p.heldout_ppl = 12.5;
  p.baseline_ppl = 11.0;
  p.heldout_tokens = 4096;
  p.heldout_context = 512;
  p.heldout_hash = "beef";
  p.calibration_score = 0.93;
  return *st;
}

// Paths of every leaf and container of `j` (arrays: their first two elements and the last).
void CollectFields(const json& j, const json::json_pointer& at,
                   std::vector<json::json_pointer>* out) {
  if (!at.empty()) out->push_back(at);
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) CollectFields(it.value(), at / it.key(), out);
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) {
      if (i < 2 || i + 1 == j.size()) CollectFields(j[i], at / i, out);
    }
  }
}

// The kinds a JSON value can be, with all numbers one kind.
std::string Kind(const json& v) { return v.is_number() ? "number" : v.type_name(); }

struct Mutation {
  const char* name;
  json value;
};

std::vector<Mutation> Mutations() {
  return {{"number", 3},
          {"string", "x"},
          {"bool", true},
          {"array", json::array({1, 2})},
          {"object", json::object({{"a", 1}})},
          {"beyond int32", uint64_t{4294967297}},
          {"negative", -1},
          {"beyond int64", 1e300},
          {"huge string", std::string(100000, 'A')}};
}

// The key a message must name for a field: its last object key, or "<array key>[i]".
std::string FieldName(const json::json_pointer& at) {
  std::string last = at.back();
  if (!last.empty() && std::isdigit(static_cast<unsigned char>(last[0]))) {
    return at.parent_pointer().back();
  }
  return last;
}

struct AttackCount {
  int cases = 0, throws = 0, misreads = 0, unnamed = 0;
};

// Runs every mutation of every field of `doc` through `read` (which returns the reader's
// status), and checks: no exception; a refusal names the field and echoes at most a bounded
// excerpt; an acceptance keeps the field's kind (a string stays a string...), is not a huge
// string, and is not an integer beyond int32 unless `wide_ints` lists the field.
AttackCount Attack(const std::string& reader, const json& doc,
                   const std::function<absl::Status(const std::string&)>& read,
                   const std::set<std::string>& wide_ints = {}, bool strict = true) {
  AttackCount count;
  std::vector<json::json_pointer> fields;
  CollectFields(doc, json::json_pointer(), &fields);
  for (const json::json_pointer& at : fields) {
    for (const Mutation& m : Mutations()) {
      json mutated = doc;
      mutated[at] = m.value;
      ++count.cases;
      absl::Status s;
      try {
        s = read(mutated.dump());
      } catch (...) {
        ++count.throws;
        ADD_FAILURE() << reader << " threw for " << at.to_string() << " = " << m.name;
        continue;
      }
      const std::string field = FieldName(at);
      if (!s.ok()) {
        if (std::string(s.message()).find(field) == std::string::npos) {
          ++count.unnamed;
          if (strict)
            ADD_FAILURE() << reader << ": " << at.to_string() << " = " << m.name
                          << " refused without naming '" << field << "': " << s;
        }
        EXPECT_LT(s.message().size(), 1500u) << reader << " " << at.to_string() << " " << m.name;
        continue;
      }
      const json& original = doc[at];
      const bool kind_changed = Kind(original) != Kind(m.value);
      const bool huge = std::string(m.name) == "huge string";
      const bool wide = std::string(m.name) == "beyond int32" && original.is_number_integer() &&
                        wide_ints.count(field) == 0;
      if (kind_changed || huge || wide) {
        ++count.misreads;
        if (strict) ADD_FAILURE() << reader << " accepted " << at.to_string() << " = " << m.name;
      }
    }
  }
  std::printf("attack-count reader=%s cases=%d throws=%d misreads=%d unnamed=%d\n", reader.c_str(),
              count.cases, count.throws, count.misreads, count.unnamed);
  return count;
}

TEST(ReaderAttackTest, StrategyJsonNamesEveryMistypedOrOutOfRangeField) {
  const json doc = json::parse(MeasuredStrategy().ToJson());
  AttackCount c =
      Attack("strategy", doc,
             [](const std::string& text) { return SharingStrategy::FromJson(text).status(); },
             {"heldout_tokens"});
  EXPECT_GT(c.cases, 200);
  EXPECT_EQ(c.throws + c.misreads + c.unnamed, 0);
}

TEST(ReaderAttackTest, KvSourceBeyondInt32IsRefusedNotWrapped) {
  json doc = json::parse(MeasuredStrategy().ToJson());
  doc.erase("id");
  doc["kv_source"][1] = uint64_t{4294967296};  // wraps to 0, a valid source, under get<int>()
  auto st = SharingStrategy::FromJson(doc.dump());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()),
              HasSubstr("field 'kv_source[1]' is 4294967296 (number); expected an integer in "
                        "[0, 1023]"));
}

TEST(ReaderAttackTest, CatalogNamesEveryMistypedField) {
  const json doc = json::parse(R"({"format": "kvshare.catalog.v1",
      "models": [{"name": "m", "path": "p", "format": "gguf", "tokenizer": "t"}],
      "calibration_corpora": [{"name": "c", "path": "q"}]})");
  AttackCount c = Attack("catalog", doc, [](const std::string& text) {
    return ModelCatalog::FromJson(text, "").status();
  });
  EXPECT_EQ(c.throws + c.misreads + c.unnamed, 0);
}

// A store directory holding one model with version 1 (and, with `deprecated`, its mark).
class StoreFiles {
 public:
  explicit StoreFiles(bool deprecated) : dir_(TempDir("reader_attack_store")) {
    auto store = DirectoryStrategyStore::Open(dir_);
    EXPECT_TRUE(store.ok()) << store.status();
    auto published = (*store)->Publish(std::make_shared<const SharingStrategy>(MeasuredStrategy()),
                                       {"tiny", "job-000001"});
    EXPECT_TRUE(published.ok()) << published.status();
    if (deprecated) {
      EXPECT_TRUE((*store)->Deprecate(kFingerprint, 1, "worse").ok());
    }
    record_ = (*store)->RecordPath(kFingerprint, 1);
    mark_ = record_.substr(0, record_.size() - 5) + ".deprecated.json";
  }
  const std::string& dir() const { return dir_; }
  const std::string& record() const { return record_; }
  const std::string& mark() const { return mark_; }

 private:
  std::string dir_, record_, mark_;
};

TEST(ReaderAttackTest, RegistryRecordsAndMarksAreRefusedByFileAndField) {
  StoreFiles files(/*deprecated=*/true);
  const std::string record = *ReadFileToString(files.record());
  const std::string mark = *ReadFileToString(files.mark());
  auto reopen = [&](const std::string& path, const std::string& text) {
    EXPECT_TRUE(WriteFileAtomically(path, text).ok());
    absl::Status s = DirectoryStrategyStore::Open(files.dir()).status();
    if (!s.ok()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr(path));
    }
    return s;
  };
  AttackCount records =
      Attack("registry-record", json::parse(record),
             [&](const std::string& text) { return reopen(files.record(), text); },
             {"version", "heldout_tokens"});
  ASSERT_TRUE(WriteFileAtomically(files.record(), record).ok());
  AttackCount marks =
      Attack("deprecation-mark", json::parse(mark),
             [&](const std::string& text) { return reopen(files.mark(), text); }, {"version"});
  EXPECT_EQ(records.throws + records.misreads + records.unnamed, 0);
  EXPECT_EQ(marks.throws + marks.misreads + marks.unnamed, 0);
  // Restored, the store opens with the record and its mark unchanged: nothing was rewritten.
  ASSERT_TRUE(WriteFileAtomically(files.mark(), mark).ok());
  auto store = DirectoryStrategyStore::Open(files.dir());
  ASSERT_TRUE(store.ok()) << store.status();
  auto got = (*store)->Get(kFingerprint, 1);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->model_name, "tiny");
  EXPECT_EQ(got->deprecation_reason, "worse");
}

TEST(ReaderAttackTest, AMistypedRegistryFieldIsADataLossNamingFileFieldAndValue) {
  StoreFiles files(/*deprecated=*/false);
  json j = json::parse(*ReadFileToString(files.record()));
  j["model_name"] = 7;  // aborted the search service at every start before
  ASSERT_TRUE(WriteFileAtomically(files.record(), j.dump()).ok());
  auto store = DirectoryStrategyStore::Open(files.dir());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr(absl::StrFormat("strategy record %s: field 'model_name' is 7 (number); "
                                        "expected a string of at most 256 bytes",
                                        files.record())));
}

v1::SearchJob SampleJob(const std::string& id) {
  v1::SearchJob job;
  job.set_job_id(id);
  job.set_state(v1::SEARCH_JOB_SUCCEEDED);
  job.mutable_request()->set_model("stories260K");
  job.mutable_request()->set_samples(30);
  job.mutable_request()->set_tokens(64);
  job.set_n_layers(5);
  job.set_model_fingerprint(kFingerprint);
  job.mutable_progress()->set_pairs_done(3);
  job.mutable_progress()->add_best_kv_source(0);
  job.mutable_progress()->add_best_kv_source(0);
  return job;
}

std::string JobJson(const v1::SearchJob& job) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(job, &text, options).ok());
  return text;
}

TEST(ReaderAttackTest, AnUnreadableJobRecordIsQuarantinedAndItsIdNeverReused) {
  const std::string dir = TempDir("reader_attack_jobs");
  {
    auto journal = JobJournal::Open(dir);
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Write(SampleJob("job-000001"), 1).ok());
    ASSERT_TRUE((*journal)->Write(SampleJob("job-000002"), 1).ok());
  }
  // job-000002 damaged: a mistyped field.
  json damaged = json::parse(*ReadFileToString(dir + "/job-000002.json"));
  damaged["request"]["samples"] = "many";
  const std::string damaged_text = damaged.dump();
  ASSERT_TRUE(WriteFileAtomically(dir + "/job-000002.json", damaged_text).ok());
  for (int restart = 0; restart < 2; ++restart) {
    auto journal = JobJournal::Open(dir);
    ASSERT_TRUE(journal.ok());
    std::vector<v1::SearchJob> jobs = (*journal)->ReadAll();
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].job_id(), "job-000001");
    // The id stays taken across restarts, and the record is kept byte for byte.
    EXPECT_EQ((*journal)->highest_job_number(), 2u);
    EXPECT_EQ(*ReadFileToString(dir + "/quarantine/job-000002.json"), damaged_text);
    absl::Status write = (*journal)->Write(SampleJob("job-000002"), 5);
    EXPECT_EQ(write.code(), absl::StatusCode::kFailedPrecondition) << write;
    if (restart == 0) {
      ASSERT_EQ((*journal)->quarantined().size(), 1u);
      const QuarantinedJobRecord q = (*journal)->quarantined()[0];
      EXPECT_EQ(q.job_id, "job-000002");
      EXPECT_EQ(q.moved_to, dir + "/quarantine/job-000002.json");
      EXPECT_THAT(q.reason, HasSubstr("samples"));
    } else {
      EXPECT_TRUE((*journal)->quarantined().empty());  // moved aside earlier
    }
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/job-000002.json"));
}

TEST(ReaderAttackTest, JobRecordMutationsAreReadOrQuarantinedNeverThrownOrLost) {
  const std::string dir = TempDir("reader_attack_job_mutations");
  const json doc = json::parse(JobJson(SampleJob("job-000007")));
  int quarantined = 0;
  AttackCount c = Attack(
      "job-record", doc,
      [&](const std::string& text) -> absl::Status {
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
        EXPECT_TRUE(WriteFileAtomically(dir + "/job-000007.json", text).ok());
        auto journal = JobJournal::Open(dir);
        if (!journal.ok()) return journal.status();
        std::vector<v1::SearchJob> jobs = (*journal)->ReadAll();
        // Nothing lost: read, or moved aside whole; and the id stays taken either way.
        EXPECT_EQ((*journal)->highest_job_number(), 7u);
        if (!jobs.empty()) return absl::OkStatus();
        ++quarantined;
        EXPECT_EQ(*ReadFileToString(dir + "/quarantine/job-000007.json"), text);
        return absl::DataLossError((*journal)->quarantined().at(0).reason);
      },
      // protobuf's JSON form reads "3" as 3 and has no string limits of its own (the file
      // has one): counted, not failed.
      {}, /*strict=*/false);
  std::printf("attack-count reader=job-record quarantined=%d\n", quarantined);
  EXPECT_EQ(c.throws, 0);
  EXPECT_GT(quarantined, 0);
}

TEST(ReaderAttackTest, OversizedAndEndlessFilesAreRefusedNamingTheLimit) {
  auto zero = SharingStrategy::ReadFile("/dev/zero");
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(zero.status().message()),
              HasSubstr("/dev/zero is larger than 1048576 bytes"));
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto nested = ParseJsonObject(deep, "doc");
  ASSERT_FALSE(nested.ok());
  EXPECT_THAT(std::string(nested.status().message()), HasSubstr("deeper than 64 levels"));
}

TEST(ReaderAttackTest, EchoedValuesAreCutToABoundedExcerpt) {
  EXPECT_EQ(Excerpt("short"), "short");
  const std::string cut = Excerpt(std::string(20000, 'j'));
  EXPECT_EQ(cut, std::string(64, 'j') + "...(20000 bytes)");
  EXPECT_EQ(Excerpt(std::string("a\nb\x01", 4)), "a\\x0ab\\x01");
}

// Request bounds, checked before the model loads or anything is sized by them.
class RequestBoundsTest : public ::testing::Test {
 protected:
  static v1::CreateSearchJobRequest Request() {
    v1::CreateSearchJobRequest r;
    r.set_model("stories260K");
    r.set_calibration_text("once upon a time\n");
    return r;
  }
  absl::Status Prepare(const v1::CreateSearchJobRequest& r) {
    return PrepareSearchJob(r, *catalog_).status();
  }
  std::unique_ptr<ModelCatalog> catalog_ = ModelCatalog::Default();
};

TEST_F(RequestBoundsTest, SamplesTokensAndHeldoutTokensBeyondTheirLimitsAreRefused) {
  v1::CreateSearchJobRequest r = Request();
  r.set_samples(2147483647);  // reserved 128 GiB before the limit
  absl::Status s = Prepare(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("samples 2147483647 is above the limit, 4096"));
  r = Request();
  r.set_tokens(2147483647);
  s = Prepare(r);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tokens 2147483647 is above the limit, 32768"));
  r = Request();
  r.set_heldout_tokens(2147483647);
  s = Prepare(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("heldout_tokens 2147483647 is above the limit, 268435456"));
  EXPECT_TRUE(catalog_->loaded_model_names().empty());  // refused before the model loaded
}

TEST_F(RequestBoundsTest, HugeStringFieldsAreRefusedWithATruncatedEcho) {
  for (const char* field : {"model", "calibration_corpus", "order", "method", "idempotency_key"}) {
    v1::CreateSearchJobRequest r = Request();
    const std::string huge(20000, 'z');
    if (std::string(field) == "model") r.set_model(huge);
    if (std::string(field) == "calibration_corpus") r.set_calibration_corpus(huge);
    if (std::string(field) == "order") r.set_order(huge);
    if (std::string(field) == "method") r.set_method(huge);
    if (std::string(field) == "idempotency_key") r.set_idempotency_key(huge);
    absl::Status s = Prepare(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
    EXPECT_THAT(std::string(s.message()), HasSubstr("...(20000 bytes)"));
    EXPECT_LT(s.message().size(), 200u) << s;
  }
}

}  // namespace
}  // namespace kvshare
