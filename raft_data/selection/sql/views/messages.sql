-- The selected rows in conversational form: the prompt as the user turn, the completion as the assistant turn.
-- Reads selected_rows (the checked selection, registered from Python).

with selected as (
    select * from selected_rows
),

final as (
    select
        prompt_id,
        sample_idx,
        [
            {'role': 'user', 'content': prompt},
            {'role': 'assistant', 'content': completion}
        ] as messages,
        reward,
        n_tokens,
        truncated,
        source,
        round
    from selected
)

select * from final
