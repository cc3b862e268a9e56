-- kept_and_rejected: every sample of a round with its reward and whether selection kept it, best first per prompt.
-- Reads the views raw_samples, raw_scores and raw_selected.

with samples as (
    select prompt_id, sample_idx, prompt, completion
    from raw_samples
),

scores as (
    select prompt_id, sample_idx, reward
    from raw_scores
),

selected as (
    select prompt_id, sample_idx
    from raw_selected
),

marked as (
    select
        samples.*,
        scores.reward,
        selected.sample_idx is not null as kept
    from samples
    join scores using (prompt_id, sample_idx)
    left join selected using (prompt_id, sample_idx)
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, kept
    from marked
)

select * from final
order by prompt_id, kept desc, reward desc, sample_idx
