-- pairs: preference pairs for DPO from the same candidates. For each prompt the chosen completion is the one with
-- the highest rank_key (ties to the lowest sample_idx) and the rejected one the lowest (ties to the highest
-- sample_idx); a prompt gives a pair only when chosen minus rejected exceeds $pair_margin (select.pair_margin).
-- With the `correct` reward that is a correct against an incorrect completion.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

ends as (
    select
        prompt_id,
        arg_max(candidate_rows, (rank_key, -sample_idx)) as chosen,
        arg_min(candidate_rows, (rank_key, -sample_idx)) as rejected
    from candidate_rows
    group by prompt_id
),

final as (
    select
        prompt_id,
        chosen.prompt as prompt,
        chosen.completion as chosen,
        rejected.completion as rejected,
        chosen.reward as chosen_reward,
        rejected.reward as rejected_reward,
        chosen.sample_idx as chosen_sample_idx,
        rejected.sample_idx as rejected_sample_idx,
        chosen.round as round
    from ends
    where chosen.rank_key - rejected.rank_key > $pair_margin
)

select * from final
order by prompt_id
