// A StrategyStore on etcd (strategy_store.h's contract), for several search-service replicas
// sharing one registry. Keys under the service's prefix P:
//
//   P/strategies/<fingerprint>/v00000003             the record (kvshare.v1.StrategyRecord as
//                                                   JSON; never rewritten)
//   P/strategies/<fingerprint>/v00000003.deprecated  its deprecation mark, if any
//   P/strategies/<fingerprint>/version               the model's version counter ("3")
//   P/strategy_ids/<strategy id>                     "<fingerprint>/3": content -> version
//   P/projections/<sha256>/00000000, 00000001, ...  an output projections blob (issue 18) in
//                                                   pieces of 512 KiB (etcd's request limit)
//   P/projections/<sha256>/size                     its size, written after the pieces: a blob
//                                                   is whole once this key exists
//
// Projections are written before the record naming them and read (checked against the hash)
// when a record is; records carry only their header. etcd is meant for small values: a blob of
// a few MiB (SmolLM2) is fine, a 7B model's (32 MiB a layer) would want a blob store beside
// etcd and only the header here.
//
// Publish is one transaction: if the counter is still at the revision this replica last saw
// and the strategy id is not yet taken, write the record, bump the counter and take the id.
// When another replica got there first the transaction fails, and the answer says why: the
// id is taken (the same content: its existing record comes back, created = false) or the
// counter moved (retry with the new value). So replicas publishing at once get distinct,
// gap-free versions, and equal content gets one version. etcd answers a transaction only once
// a quorum has it on disk: an answered publish is durable.
//
// Reads are served from an in-memory index that a watch on P/strategies/ keeps current; a read
// that misses (a version another replica published a moment ago) first reads the model's keys
// from etcd, so Get/GetById never answer NOT_FOUND for a published version. List is the index
// (current within the watch's delay, milliseconds on a LAN). Deprecation is a create-if-absent
// transaction: the first reason wins across replicas.
//
// Errors: UNAVAILABLE naming the key and the endpoints when etcd cannot be reached (writes, and
// reads that miss the index); DataLoss naming the key for a record that does not parse,
// validate or fit the dense sequence (Open refuses to start on one). Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/etcd_client.h"
#include "search_service/server/strategy_index.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class EtcdStrategyStore : public StrategyStore {
 public:
  // Reads every record under `prefix`/strategies/ and starts watching it.
  static absl::StatusOr<std::unique_ptr<EtcdStrategyStore>> Open(
      std::shared_ptr<const EtcdClient> client, const std::string& prefix);
  ~EtcdStrategyStore() override;

  absl::StatusOr<PublishOutcome> Publish(std::shared_ptr<const SharingStrategy> strategy,
                                         const PublishInfo& info) override;
  absl::StatusOr<StrategyRecord> Get(const std::string& model_fingerprint,
                                     uint64_t version) const override;
  absl::StatusOr<StrategyRecord> GetById(const std::string& strategy_id) const override;
  std::vector<StrategyRecord> List(const std::string& model_fingerprint) const override;
  absl::StatusOr<StrategyRecord> Deprecate(const std::string& model_fingerprint, uint64_t version,
                                           const std::string& reason) override;
  absl::Status PutProjections(std::shared_ptr<const OutputProjections> projections) override;
  // Reads the pieces from etcd on every call (callers cache: strategy_registry_service.h).
  absl::StatusOr<std::shared_ptr<const OutputProjections>> GetProjections(
      const ProjectionsHeader& header) const override;

  // The key of a version's record (tests).
  std::string RecordKey(const std::string& model_fingerprint, uint64_t version) const;

 private:
  struct Counter {
    uint64_t value = 0;
    int64_t mod_revision = 0;  // 0: the key does not exist yet
  };

  EtcdStrategyStore(std::shared_ptr<const EtcdClient> client, std::string prefix)
      : client_(std::move(client)), prefix_(std::move(prefix)) {}

  std::string ModelPrefix(const std::string& model_fingerprint) const;
  std::string ProjectionsPrefix(const std::string& sha256) const;
  ProjectionsResolver Resolver() const;
  // Adds what `kvs` (every key of one model, ordered by key, read at one revision) holds that
  // the index lacks. DataLoss naming the key for a damaged record or a gap.
  absl::Status ApplyModelKeys(const std::string& model_fingerprint,
                              const std::vector<EtcdKeyValue>& kvs) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the model's keys from etcd and applies them.
  absl::Status CatchUp(const std::string& model_fingerprint) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads every model's keys (at Open, and when the watch fell behind a compaction).
  absl::Status LoadAll(int64_t* revision) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWatch(const EtcdWatchBatch& batch);

  const std::shared_ptr<const EtcdClient> client_;
  const std::string prefix_;
  mutable absl::Mutex mu_;
  // Mutable: a read that misses catches the index up.
  mutable StrategyIndex index_ ABSL_GUARDED_BY(mu_);
  mutable std::map<std::string, Counter> counters_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<EtcdWatch> watch_;  // last: stopped first
};

}  // namespace kvshare
