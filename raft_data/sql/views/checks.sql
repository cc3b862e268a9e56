-- Data tests on a selection before it is published (one row of counts; Python decides what must hold).
-- Reads selected_rows (the selection), candidates, scored and samples; $round is the round being selected.

with selected as (
    select * from selected_rows
),

this_round_prompts as (
    select distinct prompt_id from samples where round = $round
),

candidate_rows as (
    select candidates.* from candidates semi join this_round_prompts using (prompt_id)
),

selected_stats as (
    select
        count(*) as n_rows,
        count(*) - count(prompt_id) as n_null_ids,
        count(*) - count(reward) as n_null_rewards,
        count(distinct prompt_id) as n_prompts,
        count(distinct (round, prompt_id, sample_idx)) as n_distinct_samples
    from selected
),

per_prompt as (
    select coalesce(max(n), 0) as max_per_prompt
    from (select count(*) as n from selected group by prompt_id)
),

candidate_stats as (
    select count(*) as n_candidates, count(distinct prompt_id) as n_candidate_prompts
    from candidate_rows
),

not_in_pool as (
    -- a selected row must be a scored sample, with the reward it was scored with
    select count(*) as n_not_in_pool
    from selected
    anti join scored using (round, prompt_id, sample_idx, reward)
),

not_candidates as (
    select count(*) as n_not_candidates
    from selected
    anti join candidate_rows using (round, prompt_id, sample_idx)
),

final as (
    select * from selected_stats, per_prompt, candidate_stats, not_in_pool, not_candidates
)

select * from final
