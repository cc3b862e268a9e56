-- cumulative: Llama 2's rejection sampling. For each prompt of this round keep the best candidate among the
-- samples of this round and of every earlier round of the experiment ($round = this round); ties go to the
-- earliest round, then the lowest sample_idx. The pool (views samples and scores) holds rounds 0..$round.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

this_round_prompts as (
    select distinct prompt_id
    from samples
    where round = $round
),

pooled as (
    select candidate_rows.*
    from candidate_rows
    semi join this_round_prompts using (prompt_id)
),

best as (
    -- as best_per_prompt: arg_max instead of a window, ordered by rank_key, then the earliest round and sample
    select arg_max(pooled, (pooled.rank_key, -pooled.round, -pooled.sample_idx)) as best_row
    from pooled
    group by prompt_id
),

final as (
    select
        best_row.prompt_id,
        best_row.sample_idx,
        best_row.prompt,
        best_row.completion,
        best_row.reward,
        best_row.n_tokens,
        best_row.truncated,
        best_row.source,
        best_row.round
    from best
)

select * from final
order by prompt_id
