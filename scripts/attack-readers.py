#!/usr/bin/env python3
"""The reader attacks of issue 19 against built binaries, counted per attack class.

  python3 scripts/attack-readers.py BUILD_DIR [ASSETS_DIR]

strategy-file: every field of a strategy file x 9 mutations -> `kvshare info --strategy F`.
registry-start: model_name, format, source_job_id of a registry record and the deprecation
reason, x 9 mutations -> `kvshare-search --data-dir D` start-up. dev-zero: `--strategy
/dev/zero` under a 20 s timeout. A crash is a death by signal (abort, segfault); a hang is the
timeout (a search service that starts and serves is stopped after 4 s and counts as started).
"""
import json, os, shutil, signal, subprocess, sys, tempfile

build = sys.argv[1]
assets = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), '../../shared/assets')
kvshare = os.path.join(build, 'tools/kvshare')
search = os.path.join(build, 'search_service/kvshare-search')
model = os.path.join(assets, 'stories260K.bin')
MUTATIONS = [3, "x", True, [1, 2], {"a": 1}, 4294967297, -1, 1e300, "A" * 100000]


def leaves(j, path=()):
    if path:
        yield path
    if isinstance(j, dict):
        for k, v in j.items():
            yield from leaves(v, path + (k,))
    elif isinstance(j, list):
        for i, v in enumerate(j):
            if i < 2 or i == len(j) - 1:
                yield from leaves(v, path + (i,))


def mutate(doc, path, value):
    d = json.loads(json.dumps(doc))
    t = d
    for p in path[:-1]:
        t = t[p]
    t[path[-1]] = value
    return d


def run(cmd, timeout):
    try:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        return r.returncode, r.stderr.decode(errors='replace')
    except subprocess.TimeoutExpired:
        return 'timeout', ''


def count(name, results):
    crashes = sum(1 for rc, _ in results if isinstance(rc, int) and rc < 0)
    hangs = sum(1 for rc, _ in results if rc == 'timeout')
    refused = sum(1 for rc, _ in results if isinstance(rc, int) and rc > 0)
    print(f'{name}: cases={len(results)} crashes={crashes} hangs={hangs} refused={refused} '
          f'accepted={len(results) - crashes - hangs - refused}', flush=True)


tmp = tempfile.mkdtemp()
# A strategy file for stories260K (5 layers), with provenance and quality.
base = {"format": "kvshare.strategy.v1", "model_fingerprint": "f" * 64, "n_layers": 5,
        "kv_source": [0, 0, 2, 2, 4], "owning_layers": 3,
        "provenance": {"method": "kvsharer", "order": "dissimilar", "threshold": 0.5,
                       "calibration_hash": "c", "target_layers": 2, "score": 0.9, "note": "n",
                       "best_of": 2, "max_nll_increase": 0.1,
                       "quality": {"heldout_ppl": 12.5, "baseline_ppl": 11.0,
                                   "heldout_nll_increase": 0.1, "heldout_tokens": 4096,
                                   "heldout_context": 512, "heldout_hash": "h",
                                   "calibration_score": 0.93}}}
results = []
for path in leaves(base):
    for m in MUTATIONS:
        f = os.path.join(tmp, 's.json')
        with open(f, 'w') as out:
            json.dump(mutate(base, path, m), out)
        results.append(run([kvshare, 'info', '--model', model, '--strategy', f], 60))
count('strategy-file (kvshare info --strategy)', results)
count('dev-zero (kvshare info --strategy /dev/zero)',
      [run([kvshare, 'info', '--model', model, '--strategy', '/dev/zero'], 20)])

# A registry with one record and its deprecation mark, made by the service under test.
fp = "f" * 64
record = {"format": "kvshare.strategy_record.v1", "model_fingerprint": fp, "model_name": "m",
          "version": 1, "publish_time": "2026-01-01T00:00:00Z", "source_job_id": "job-000001",
          "strategy": {"format": "kvshare.strategy.v1", "model_fingerprint": fp,
                       "kv_source": [0, 0, 2, 2, 4]}}
mark = {"format": "kvshare.strategy_deprecation.v1", "model_fingerprint": fp, "version": 1,
        "reason": "r", "deprecate_time": "2026-01-02T00:00:00Z"}
results = []
for which, field in [('record', 'model_name'), ('record', 'format'), ('record', 'source_job_id'),
                     ('mark', 'reason')]:
    for m in MUTATIONS:
        d = os.path.join(tmp, 'data')
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, 'strategies', fp))
        r = mutate(record, (field,), m) if which == 'record' else record
        k = mutate(mark, (field,), m) if which == 'mark' else mark
        with open(os.path.join(d, 'strategies', fp, 'v00000001.json'), 'w') as out:
            json.dump(r, out)
        with open(os.path.join(d, 'strategies', fp, 'v00000001.deprecated.json'), 'w') as out:
            json.dump(k, out)
        p = subprocess.Popen([search, '--data-dir', d, '--port', '0', '--metrics-port', '0'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = p.communicate(timeout=4)
            results.append((p.returncode, err.decode(errors='replace')))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            p.communicate()
            results.append((0, 'started'))  # it started and served: accepted
count('registry-start (kvshare-search with a mistyped record or mark)', results)
shutil.rmtree(tmp, ignore_errors=True)
