// A task's result is read back by whoever joins the task: it must be owned.

#[castor_abi::task(thread)]
pub fn greeting() -> Result<&'static str, String> {
    Ok("hello")
}

fn main() {}
