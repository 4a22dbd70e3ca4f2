"""Profile users with any `ProfileLLM`, one module per step.

- `plan`: which users to profile and with what (facts, evidence, label candidates, the
  spec's rule verdict) under which input key.
- `prompt` and `schema`: what the model is shown and the JSON it must answer
  (`UserProfile`; `CompactProfile` for small models, see `answer.expand_compact`).
- `run`: the requests, retries and the parallel stream (`iter_profiles`), the one place
  that calls `ProfileLLM.generate`.
- `answer`: parse, clean and check an answer; `fact_rules`: the contradictions of computed
  facts and their repairs, and the purchase-intent bands; `filling`: empty fields from
  label candidates and facts.
- `outcome`: what one user's attempts gave, and a run's figures; `stored`: the rows of
  `user_profiles` / `profile_failures` and which input keys are settled.
"""
