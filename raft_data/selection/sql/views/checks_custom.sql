-- For a user's own selection query (strategy custom): every selected row must be a scored sample of the pool,
-- with the reward it was scored with (a custom query may read samples and scores around the guards).
-- Reads selected_rows and scored.

with selected as (
    select round, prompt_id, sample_idx, reward from selected_rows
),

final as (
    select count(*) as n_not_scored
    from selected
    anti join scored using (round, prompt_id, sample_idx, reward)
)

select * from final
