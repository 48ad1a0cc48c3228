"""Public test helpers for backend authors, the project's tests, examples and benchmarks.

Never imported by the library itself (an import-linter contract keeps it that way).

* :mod:`~phasegrad_hw.testing.contract` — :func:`check_substrate_contract`, the executable
  substrate contract (docs/design.md §4) to run against any backend's substrate factory;
* :mod:`~phasegrad_hw.testing.doubles` — fault-injecting substrate doubles (recording,
  failing, hanging wrappers around any substrate);
* :mod:`~phasegrad_hw.testing.daqmx` — a stand-in for the nidaqmx API, wired to an emulated
  chip, so the DAQ driver runs without NI hardware;
* :mod:`~phasegrad_hw.testing.networks` — small devices and tasks (2+5+2, tiny, blobs);
* :mod:`~phasegrad_hw.testing.mosquitto` — a private mosquitto broker (users, ACL, TLS) on a
  free loopback port, for MQTT tests, examples and benchmarks, and ``phasegrad-hw agent`` in
  its own process on it (:func:`~phasegrad_hw.testing.mosquitto.agent_process`);
* :mod:`~phasegrad_hw.testing.benches` — commands in their own processes:
  ``phasegrad-hw emulate bench`` (:func:`~phasegrad_hw.testing.benches.emulated_bench`, the
  one way to start an emulated bench process) and SCPI queries to its instruments;
* :mod:`~phasegrad_hw.testing.remote` — remote training over MQTT: the vowel device and data,
  the in-process reference, the agent-SIGKILL experiment of tests and benchmarks.

A ``transcripts`` module (in-memory transcripts of a driver's link, to test a driver
without its instrument) belongs here too; its drivers plug into
:func:`check_substrate_contract` through the factory like any other substrate.
"""
