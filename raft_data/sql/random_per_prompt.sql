-- random_per_prompt: the baseline that shows ranking matters. For each prompt keep one sample chosen by a
-- hash of (prompt_id, sample_idx), ignoring the reward: the same rows on every rerun, unrelated to quality.
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

picked as (
    select *
    from scored_samples
    qualify row_number() over (partition by prompt_id order by hash(prompt_id, sample_idx), sample_idx) = 1
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from picked
)

select * from final
order by prompt_id
