-- best_per_prompt: RAFT's local ranking. For each prompt keep the candidate with the highest rank_key
-- (select.rank_by, the reward by default); ties go to the lowest sample_idx, so a rerun selects the same rows.
-- Reads the view candidates: the round's scored samples that passed the guards and the user's where/qualify.

with candidate_rows as (
    select * from candidates
),

best as (
    select *
    from candidate_rows
    qualify row_number() over (partition by prompt_id order by rank_key desc, sample_idx) = 1
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from best
)

select * from final
order by prompt_id
