-- best_per_prompt: RAFT's local ranking. For each prompt keep the candidate with the highest rank_key
-- (select.rank_by, the reward by default); ties go to the lowest sample_idx, so a rerun selects the same rows.
-- Reads the view candidates: the round's scored samples that passed the guards and the user's where/qualify.

with candidate_rows as (
    select * from candidates
),

best as (
    -- the same rows as `qualify row_number() over (partition by prompt_id order by rank_key desc, sample_idx) = 1`,
    -- but arg_max keeps one row per prompt as it scans instead of sorting every sample's text
    select arg_max(candidate_rows, (candidate_rows.rank_key, -candidate_rows.sample_idx)) as best_row
    from candidate_rows
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
