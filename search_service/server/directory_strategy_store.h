// The embedded, crash-safe StrategyStore (docs/ARCHITECTURE.md): one JSON file per version,
//
//   <dir>/<model fingerprint>/v00000003.json             the record (never rewritten)
//   <dir>/<model fingerprint>/v00000003.deprecated.json  its deprecation mark, if any
//   <dir>/projections/projections-<sha256>.bin          an output projections blob (issue 18),
//                                                        content-addressed, written before any
//                                                        record naming it; never rewritten
//   <dir>/LOCK                                           held by the owning process
//
// Every file is written to a temporary beside it, fsynced, renamed into place, and the
// directory fsynced (WriteFileAtomically); Publish answers only after that, so an answered
// publish survives any crash, and a crash mid-publish leaves either the whole record or none
// (the next publish then takes the same version: versions stay dense). Open() reads every
// record back, removes temporaries a crash left behind, and refuses (DataLoss naming the file)
// a record that does not parse, validate, or fit the dense sequence — it never serves a
// damaged one.
//
// Damaged records are refused by name, not quarantined. Every field is read through checked
// accessors (common/util/json_fields.h), so a wrong type, an out-of-range number or an
// oversized string (common/limits.h) is a DataLoss naming the file, the field, the value and
// the expectation — never an exception, never a crash loop. Refusing costs the control plane's
// availability until an operator repairs or removes the named file, and that is the better
// trade here: workers keep serving the strategies they hold while the search service is down,
// whereas a registry that started without version N would either hand N to the next publish
// (two contents under one version, a silent misread for every worker holding the old N) or
// serve a hole that rollouts and pins cannot resolve. The job journal, whose records are
// reports, quarantines instead (job_journal.h).
//
// Publishes are serialised by one mutex (a publish is an fsync or two). Reads are served from
// memory. Thread-safe; one process per directory (the LOCK).
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "search_service/server/data_dir.h"
#include "search_service/server/strategy_index.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class DirectoryStrategyStore : public StrategyStore {
 public:
  // Creates `dir` if needed. FailedPrecondition when another process holds it; DataLoss for a
  // damaged record.
  static absl::StatusOr<std::unique_ptr<DirectoryStrategyStore>> Open(const std::string& dir);

  absl::StatusOr<PublishOutcome> Publish(std::shared_ptr<const SharingStrategy> strategy,
                                         const PublishInfo& info) override;
  absl::StatusOr<StrategyRecord> Get(const std::string& model_fingerprint,
                                     uint64_t version) const override;
  absl::StatusOr<StrategyRecord> GetById(const std::string& strategy_id) const override;
  std::vector<StrategyRecord> List(const std::string& model_fingerprint) const override;
  absl::StatusOr<StrategyRecord> Deprecate(const std::string& model_fingerprint, uint64_t version,
                                           const std::string& reason) override;
  absl::Status PutProjections(std::shared_ptr<const OutputProjections> projections) override;
  // Reads and hashes the file on every call (callers cache: strategy_registry_service.h).
  absl::StatusOr<std::shared_ptr<const OutputProjections>> GetProjections(
      const ProjectionsHeader& header) const override;

  const std::string& dir() const { return dir_; }
  // Where the projections blobs live.
  std::string ProjectionsDir() const { return dir_ + "/" + kProjectionsDirName; }
  static constexpr char kProjectionsDirName[] = "projections";
  // The file of a version's record (tests).
  std::string RecordPath(const std::string& model_fingerprint, uint64_t version) const;

 private:
  DirectoryStrategyStore(std::string dir, std::unique_ptr<DirectoryLock> lock)
      : dir_(std::move(dir)), lock_(std::move(lock)) {}
  absl::Status Load();

  const std::string dir_;
  const std::unique_ptr<DirectoryLock> lock_;
  mutable absl::Mutex mu_;
  StrategyIndex index_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvshare
