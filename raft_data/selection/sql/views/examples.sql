-- For `raft-data inspect`: the prompts $prompt_ids (the round's first few, from example_prompts.sql), each with every
-- sample in the pool: whether selected/ kept it, and which guard dropped it if one did.

with pool_rows as (
    -- a filter on a list of constants, not a join: a join with the pool's rows may hold all of them in memory
    select guarded.*
    from guarded
    where list_contains($prompt_ids::varchar[], guarded.prompt_id)
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
