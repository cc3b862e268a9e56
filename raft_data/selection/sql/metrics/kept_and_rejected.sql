-- kept_and_rejected: the samples of a round's first $n_prompts prompts (by prompt_id) with their rewards and whether
-- selection kept them, best first per prompt. Reads the views raw_samples, raw_scores and raw_selected.

with shown_prompts as (
    select prompt_id
    from raw_samples
    group by prompt_id
    order by prompt_id
    limit $n_prompts
),

samples as (
    select prompt_id, sample_idx, prompt, completion
    from raw_samples
    semi join shown_prompts using (prompt_id)
),

scores as (
    select prompt_id, sample_idx, reward
    from raw_scores
    semi join shown_prompts using (prompt_id)
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
