"""`tierkv simulate`'s engine side: the server's own scheduler, cache manager and policies
driven by a virtual clock (discrete events, no sleeping, no KV bytes).

* `clock.VirtualLanes`: per-tier transfer lanes on virtual time (the modelled links of
  `npu_sim.links`), handed to the real `CacheManager` as its `charge` hook.
* `memory_tier.MemoryTier`: an in-process `StorageTier` for the simulator only. The
  simulator's KV layout is one fp16 element per token and K/V (64 bytes a block), so the
  tiers hold capacity accounting, not KV bytes; capacities are converted so that every
  tier holds exactly as many blocks as the live server's (`sizing`).
* `cache.VirtualTimeCache`: the `CacheManager` whose finished loads are handed to the
  scheduler when the modelled lanes have carried them, not when the thread finished.
* `engine.Simulator`: the engine loop (arrivals, `poll`, `schedule`, a step lasting its
  `npu_sim.cost_model` time, `update_from_output`) on the virtual clock.

The workloads, trace reader, result.json and plots are `load`'s: `load/simulate.py` is
the command's front end (`load` is the top floor and may import `server`; `server` never
imports `load`, so `tierkv simulate` hands its arguments to `python -m load simulate`).
"""
