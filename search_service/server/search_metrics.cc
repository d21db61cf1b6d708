#include "search_service/server/search_metrics.h"

namespace kvshare {

SearchMetrics::SearchMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      jobs_family_(prometheus::BuildCounter()
                       .Name("kvshare_search_jobs_total")
                       .Help("Search jobs by what became of them")
                       .Register(*registry_)),
      jobs_queued(prometheus::BuildGauge()
                      .Name("kvshare_search_jobs_queued")
                      .Help("Search jobs waiting to run")
                      .Register(*registry_)
                      .Add({})),
      jobs_running(prometheus::BuildGauge()
                       .Name("kvshare_search_jobs_running")
                       .Help("Search jobs running")
                       .Register(*registry_)
                       .Add({})),
      job_seconds(prometheus::BuildHistogram()
                      .Name("kvshare_search_job_seconds")
                      .Help("Run time of search jobs")
                      .Register(*registry_)
                      .Add({}, prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 15, 30, 60,
                                                                       120, 300, 600, 1800, 3600})),
      pairs_scored(prometheus::BuildCounter()
                       .Name("kvshare_search_pairs_scored_total")
                       .Help("Candidate strategies scored")
                       .Register(*registry_)
                       .Add({})),
      strategies_published(prometheus::BuildCounter()
                               .Name("kvshare_strategies_published_total")
                               .Help("Strategy versions published")
                               .Register(*registry_)
                               .Add({})),
      strategy_records(prometheus::BuildGauge()
                           .Name("kvshare_strategy_records")
                           .Help("Strategy records in the registry store")
                           .Register(*registry_)
                           .Add({})),
      quarantined_job_records(prometheus::BuildGauge()
                                  .Name("kvshare_search_quarantined_job_records")
                                  .Help("Unreadable job records moved to <jobs>/quarantine at "
                                        "start")
                                  .Register(*registry_)
                                  .Add({})),
      heldout_baselines_family_(prometheus::BuildCounter()
                                    .Name("kvshare_search_heldout_baselines_total")
                                    .Help("Unshared held-out passes search jobs looked up, by "
                                          "source: computed (not kept: the job runs it) or "
                                          "cached (an earlier job's)")
                                    .Register(*registry_)),
      heldout_baselines_computed(heldout_baselines_family_.Add({{"source", "computed"}})),
      heldout_baselines_cached(heldout_baselines_family_.Add({{"source", "cached"}})) {}

prometheus::Counter& SearchMetrics::jobs(const std::string& result) {
  return jobs_family_.Add({{"result", result}});
}

}  // namespace kvshare
