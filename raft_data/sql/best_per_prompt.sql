-- best_per_prompt: RAFT's local ranking. For each prompt keep the sample with the highest reward;
-- ties go to the lowest sample_idx, so a rerun selects exactly the same rows.
-- Reads the views raw_samples and raw_scores (one row per sample each).

with samples as (
    select prompt_id, sample_idx, prompt, completion, n_tokens, truncated, source, round
    from raw_samples
),

scores as (
    select prompt_id, sample_idx, reward
    from raw_scores
),

scored_samples as (
    select samples.*, scores.reward
    from samples
    join scores using (prompt_id, sample_idx)
),

best as (
    select *
    from scored_samples
    qualify row_number() over (partition by prompt_id order by reward desc, sample_idx) = 1
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from best
)

select * from final
order by prompt_id
