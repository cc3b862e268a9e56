-- For `raft-data inspect`: the first $n_prompts prompts of the round (by prompt_id), each with every sample in
-- the pool: whether selected/ kept it, and which guard dropped it if one did.

with round_prompts as (
    select distinct prompt_id from samples where round = $round order by prompt_id limit $n_prompts
),

pool_rows as (
    select guarded.*
    from guarded
    semi join round_prompts using (prompt_id)
),

kept as (
    select round, prompt_id, sample_idx, true as kept from selected
),

final as (
    select
        pool_rows.prompt_id,
        pool_rows.prompt,
        pool_rows.round,
        pool_rows.sample_idx,
        pool_rows.reward,
        pool_rows.rank_key,
        pool_rows.completion,
        pool_rows.dropped_by,
        coalesce(kept.kept, false) as kept
    from pool_rows
    left join kept using (round, prompt_id, sample_idx)
)

select * from final
order by prompt_id, kept desc, rank_key desc, round, sample_idx
