-- Data tests on a selection before it is published: one row of counts, from one pass over the candidates
-- (Python decides what must hold). Reads selected_rows (the selection), candidates, samples and alignment.
-- $round is the round being selected; for a pool of several rounds (cumulative) only prompts of this round count.

with selected as (
    select * from selected_rows
),

this_round_prompts as (
    select distinct prompt_id from samples where round = $round
),

candidate_rows as (
    select round, prompt_id, sample_idx, reward
    from candidates
    where not getvariable('pooled') or prompt_id in (select prompt_id from this_round_prompts)
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
    -- every selected row must be a candidate, with the reward it was scored with
    select
        count(*) as n_candidates,
        count(distinct candidate_rows.prompt_id) as n_candidate_prompts,
        count(selected.sample_idx) filter (where selected.reward = candidate_rows.reward) as n_selected_candidates
    from candidate_rows
    left join selected
        on candidate_rows.prompt_id = selected.prompt_id
        and candidate_rows.sample_idx = selected.sample_idx
        and candidate_rows.round = selected.round
),

final as (
    select * from selected_stats, per_prompt, candidate_stats, alignment
)

select * from final
