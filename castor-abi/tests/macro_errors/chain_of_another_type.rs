// A task dispatched after another takes the parent's result as its first argument: a
// parent of another result type is a compile error at the handle, and so is a fan-in's
// parent list for a task whose first parameter is not a `Vec`.

#[castor_abi::task(thread)]
pub fn count(text: String) -> u64 {
    text.len() as u64
}

#[castor_abi::task(thread)]
pub fn shout(text: String, times: u32) -> String {
    text.repeat(times as usize)
}

fn dispatch(client: &castor_abi::Client) -> Result<(), castor_abi::DispatchError> {
    let counted = count::delay(client, "abc".into())?;
    shout::delay_after(client, &counted, 2)?;
    shout::delay_after_all(client, &[], 2)?;
    Ok(())
}

fn main() {
    let _ = dispatch;
}
