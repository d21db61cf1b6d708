// The search service's Prometheus metrics (prometheus-cpp), served by an Exposer that main()
// owns. Every metric is thread-safe.
//
//   kvshare_search_jobs_total{result}       created, rejected (queue full or draining),
//                                           succeeded, failed, cancelled
//   kvshare_search_jobs_queued, kvshare_search_jobs_running
//   kvshare_search_job_seconds              start -> end of a job that ran (histogram)
//   kvshare_search_pairs_scored_total       candidates scored by all jobs
//   kvshare_strategies_published_total      new versions (republishing existing content: not)
//   kvshare_strategy_records                records in the store
//   kvshare_search_quarantined_job_records  job records moved aside at start (job_journal.h)
//   kvshare_search_heldout_baselines_total{source}  the unshared held-out passes jobs measured
//                                           against: computed, or cached (an earlier job's;
//                                           heldout_baseline_cache.h)
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace kvshare {

class SearchMetrics {
 public:
  SearchMetrics();

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }
  // The job counter for `result` (one of the names above).
  prometheus::Counter& jobs(const std::string& result);

 private:
  std::shared_ptr<prometheus::Registry> registry_;  // first: the metrics below live in it
  prometheus::Family<prometheus::Counter>& jobs_family_;

 public:
  prometheus::Gauge& jobs_queued;
  prometheus::Gauge& jobs_running;
  prometheus::Histogram& job_seconds;
  prometheus::Counter& pairs_scored;
  prometheus::Counter& strategies_published;
  prometheus::Gauge& strategy_records;
  prometheus::Gauge& quarantined_job_records;

 private:
  prometheus::Family<prometheus::Counter>& heldout_baselines_family_;

 public:
  prometheus::Counter& heldout_baselines_computed;
  prometheus::Counter& heldout_baselines_cached;
};

}  // namespace kvshare
