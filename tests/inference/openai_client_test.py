#!/usr/bin/env python3
"""kvshare-worker's OpenAI-compatible API through the official `openai` Python client.

Starts kvshare-worker (SmolLM2-135M-Instruct, the worker's default model) with --http-port 0
and checks what a user of the client sees: chat and text completions, whole and streamed (the
streamed text equals the whole one, the last chunk carries the usage), logprobs, the model
list, a per-request strategy pin, a bad field refused with 400 naming it, and a client that
disconnects — mid-stream or while waiting for a whole answer — cancelling its request, seen in
the worker's /metrics (the request counted as cancelled, no KV block left in use).

  openai_client_test.py --worker build/inference_service/kvshare-worker

ctest runs it (tests/CMakeLists.txt); scripts/setup.sh installs `openai` from PyPI.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

try:
    import openai
except ImportError as e:  # a failure, not a skip: CI must run these
    sys.exit(f"openai_client_test: {e}; install it with `python3 -m pip install openai` "
             "(scripts/setup.sh does)")

WORKER = None  # set in main


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_file(path, proc, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"kvshare-worker exited with {proc.returncode}")
        try:
            with open(path) as f:
                text = f.read().strip()
                if text:
                    return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no {path} after {timeout} s")


class Worker:
    """kvshare-worker on loopback with the HTTP API on a free port."""

    def __init__(self, binary, extra_args=()):
        self.dir = tempfile.mkdtemp(prefix="kvshare-openai-")
        self.metrics_port = free_port()
        self.log_path = os.path.join(self.dir, "worker.log")
        http_port_file = os.path.join(self.dir, "http.port")
        args = [binary, "--threads", "2", "--host", "127.0.0.1", "--port", "0",
                "--metrics-port", str(self.metrics_port), "--http-port", "0",
                "--http-port-file", http_port_file, "--kv-budget-mib", "64", *extra_args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stderr=self.log, stdout=self.log)
        self.http_port = wait_for_file(http_port_file, self.proc, 60)
        self.base_url = f"http://127.0.0.1:{self.http_port}/v1"
        end = time.time() + 180
        while time.time() < end:  # /health: 503 while the model loads, then 200
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health") as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvshare-worker exited: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError("kvshare-worker never became healthy: " + self.tail())

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return r.read().decode()

    def metric(self, name):
        m = re.search("^" + re.escape(name) + r" ([0-9.e+-]+)$", self.metrics(), re.M)
        return float(m.group(1)) if m else None

    def tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.log.close()
        return code


class OpenAiClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.worker = Worker(WORKER)
        cls.client = openai.OpenAI(base_url=cls.worker.base_url, api_key="unused", max_retries=0,
                                   timeout=300)
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        code = cls.worker.stop()
        if code != 0:
            print(cls.worker.tail(), file=sys.stderr)
        assert code == 0, f"kvshare-worker exited with {code} after SIGTERM"

    def tearDown(self):
        # Every test leaves the pool empty: nothing running, no block in use.
        self.wait_for_idle()

    def wait_for_idle(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if (self.worker.metric('kvshare_kv_blocks{state="used"}') == 0 and
                    self.worker.metric("kvshare_running_sequences") == 0):
                return
            time.sleep(0.05)
        self.fail("KV blocks still in use: " + self.worker.metrics())

    def chat(self, **kw):
        kw.setdefault("max_tokens", 12)
        kw.setdefault("temperature", 0)
        return self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": "What is the capital of France?"}], **kw)

    def test_models_lists_the_served_model(self):
        models = self.client.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].object, "model")
        self.assertIn("SmolLM2", models[0].id)

    def test_chat_whole_and_streamed_agree(self):
        whole = self.chat()
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.model, self.model)
        choice = whole.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("length", "stop"))
        u = whole.usage
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        self.assertEqual(choice.finish_reason == "length", u.completion_tokens == 12)

        chunks = list(self.chat(stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, choice.message.content)  # greedy: the same answer either way
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finishes[-1], choice.finish_reason)
        self.assertTrue(all(f is None for f in finishes[:-1]))
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, u.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, u.prompt_tokens)

    def test_completions_whole_and_streamed_agree(self):
        kw = dict(model=self.model, prompt="The three primary colors are", max_tokens=8,
                  temperature=0)
        whole = self.client.completions.create(**kw)
        self.assertEqual(whole.object, "text_completion")
        text = whole.choices[0].text
        self.assertTrue(text)
        self.assertLessEqual(whole.usage.completion_tokens, 8)
        streamed = "".join(c.choices[0].text for c in self.client.completions.create(stream=True, **kw))
        self.assertEqual(streamed, text)

    def test_sampling_with_a_seed_repeats(self):
        kw = dict(model=self.model, prompt="Once upon a time", max_tokens=8, temperature=0.9,
                  top_p=0.95, seed=1234)
        a = self.client.completions.create(**kw).choices[0].text
        b = self.client.completions.create(**kw).choices[0].text
        self.assertEqual(a, b)

    def test_stop_string_ends_the_answer_before_it(self):
        whole = self.chat(max_tokens=12)
        content = whole.choices[0].message.content
        words = content.split()
        if len(words) < 2:
            self.skipTest(f"answer too short to cut: {content!r}")
        stop = " " + words[1]
        cut = self.chat(max_tokens=12, stop=[stop])
        self.assertEqual(cut.choices[0].finish_reason, "stop")
        self.assertEqual(cut.choices[0].message.content, content[:content.index(stop)])

    def test_chat_logprobs_of_greedy_tokens_are_the_top_alternative(self):
        r = self.chat(logprobs=True, top_logprobs=3, max_tokens=5)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertLessEqual(t.logprob, 0.0)
            self.assertAlmostEqual(t.logprob, max(a.logprob for a in t.top_logprobs), places=6)

    def test_strategy_pin_is_an_extension_field(self):
        r = self.chat(extra_body={"kvshare_strategy_version": 1}, max_tokens=2)
        self.assertEqual(r.model_extra["kvshare_strategy_version"], 1)
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(extra_body={"kvshare_strategy_version": 7}, max_tokens=2)
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.param, "kvshare_strategy_version")

    def test_bad_field_is_400_naming_it(self):
        for kw, param in [(dict(n=2), "n"), (dict(temperature=-0.5), "temperature"),
                          (dict(max_tokens=10 ** 6), "max_tokens")]:
            with self.subTest(param=param):
                before = self.worker.metric('kvshare_requests_total{result="invalid_argument"}')
                with self.assertRaises(openai.BadRequestError) as e:
                    self.chat(**kw)
                self.assertEqual(e.exception.status_code, 400)
                self.assertEqual(e.exception.param, param)
                self.assertEqual(e.exception.type, "invalid_request_error")
                self.assertIn(param, e.exception.message)
                self.assertEqual(
                    self.worker.metric('kvshare_requests_total{result="invalid_argument"}'),
                    before + 1)

    def long_story(self, **kw):
        return self.client.completions.create(
            model=self.model, prompt="Once upon a time", max_tokens=1000, temperature=0,
            extra_body={"ignore_eos": True}, **kw)

    def test_stream_disconnect_cancels_and_frees_the_kv_blocks(self):
        before = self.worker.metric('kvshare_requests_total{result="cancelled"}')
        stream = self.long_story(stream=True)
        got = 0
        for chunk in stream:
            got += 1
            if got == 2:
                break
        self.assertGreater(self.worker.metric('kvshare_kv_blocks{state="used"}'), 0)
        stream.close()  # the connection goes; the worker must notice
        self.wait_for_idle()
        self.assertEqual(self.worker.metric('kvshare_requests_total{result="cancelled"}'),
                         before + 1)

    def test_whole_request_abandoned_by_its_client_is_cancelled(self):
        before = self.worker.metric('kvshare_requests_total{result="cancelled"}')
        impatient = self.client.with_options(timeout=2.0)
        with self.assertRaises(openai.APITimeoutError):
            impatient.completions.create(
                model=self.model, prompt="Once upon a time", max_tokens=1000, temperature=0,
                extra_body={"ignore_eos": True})
        self.wait_for_idle()
        self.assertEqual(self.worker.metric('kvshare_requests_total{result="cancelled"}'),
                         before + 1)


class DrainTest(unittest.TestCase):
    """SIGTERM with a stream in flight: new requests get 503, the stream runs to its end."""

    def test_sigterm_lets_a_stream_finish_and_refuses_new_requests(self):
        worker = Worker(WORKER, ["--drain-grace", "60"])
        try:
            client = openai.OpenAI(base_url=worker.base_url, api_key="unused", max_retries=0)
            model = client.models.list().data[0].id
            stream = client.completions.create(model=model, prompt="Once upon a time",
                                               max_tokens=200, temperature=0, stream=True,
                                               stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True})
            chunks = [next(iter(stream))]
            worker.proc.send_signal(signal.SIGTERM)
            end = time.time() + 10
            while time.time() < end:  # /health turns 503 once the drain begins
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/health")
                except urllib.error.HTTPError as e:
                    if e.code == 503:
                        break
                time.sleep(0.02)
            with self.assertRaises(openai.APIStatusError) as refused:
                client.completions.create(model=model, prompt="x", max_tokens=2)
            self.assertEqual(refused.exception.status_code, 503)
            chunks += list(stream)
            # Not cut: all 200 tokens (ignore_eos), the finish, the usage.
            self.assertEqual(chunks[-2].choices[0].finish_reason, "length")
            self.assertEqual(chunks[-1].usage.completion_tokens, 200)
            self.assertEqual(worker.proc.wait(60), 0)
        finally:
            if worker.proc.poll() is None:
                worker.proc.kill()


def main():
    global WORKER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, help="the kvshare-worker binary")
    args, rest = parser.parse_known_args()
    WORKER = args.worker
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
