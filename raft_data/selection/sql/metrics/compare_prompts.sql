-- compare_prompts: per prompt, the best sample under each scoring (highest reward, ties to the lowest sample_idx,
-- as best_per_prompt breaks them) and how many of its samples the two scorings disagree on (for binary rewards:
-- samples that flip between correct and incorrect). Over the samples both sides scored.
-- Reads the views a_scores and b_scores (prompt_id, sample_idx, reward, error).

with paired as (
    select a_scores.prompt_id, a_scores.sample_idx, a_scores.reward as a, b_scores.reward as b
    from a_scores
    inner join b_scores using (prompt_id, sample_idx)
    where a_scores.error is null and b_scores.error is null and a_scores.reward is not null
        and b_scores.reward is not null
),

final as (
    select
        prompt_id,
        count(*) as n_samples,
        arg_max(sample_idx, (a, -sample_idx)) as best_a,
        max(a) as best_a_reward,
        arg_max(sample_idx, (b, -sample_idx)) as best_b,
        max(b) as best_b_reward,
        count_if(a != b)::bigint as n_disagree
    from paired
    group by prompt_id
)

select
    *,
    best_a != best_b as best_changed
from final
order by prompt_id
